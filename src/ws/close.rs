//! The close codes wsgate sends, named once so every mode answers alike. 1005, 1006 and 1015
//! are reserved for "no code" and "abnormal" and must never appear on the wire.

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY: u16 = 1008;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL: u16 = 1011;
pub const UPSTREAM_FAILED: u16 = 1014;

/// Whether a code received in a Close frame is one a peer may send (RFC 6455 7.4 and the IANA
/// registry): 1000-1003, 1007-1014, and the application ranges 3000-4999.
pub fn is_valid_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
