//! The checks fastwebsockets 0.10 leaves to its user, wrapped around its reader rather than
//! copied into ours: it accepts unmasked client frames and Pong/Close frames over 125 bytes, it
//! caps frames rather than messages, and it validates UTF-8 only in unfragmented text. Every
//! frame read from a peer passes [`FrameValidator::check`] before anyone acts on it, so echo and
//! relay cannot forward what RFC 6455 forbids.

use bytes::BytesMut;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};

use super::close;
use super::io::BadLength;

/// A frame taken out of fastwebsockets' borrow, with the one bit of its header it keeps private.
#[derive(Debug)]
pub struct InFrame {
    pub fin: bool,
    pub opcode: OpCode,
    /// Whether the frame arrived with a masking key (already removed from `payload`).
    pub masked: bool,
    pub payload: BytesMut,
}

impl InFrame {
    pub fn from_frame(mut frame: Frame<'_>) -> Self {
        // `Frame::mask` is private, but `fmt_head` writes the MASK bit exactly when a key was
        // present, so the header it would produce tells us what came on the wire.
        let mut head = [0u8; 16];
        frame.fmt_head(&mut head);
        let masked = head[1] & 0x80 != 0;
        let payload = match frame.payload {
            Payload::Bytes(bytes) => bytes,
            other => BytesMut::from(&other[..]),
        };
        Self {
            fin: frame.fin,
            opcode: frame.opcode,
            masked,
            payload,
        }
    }
}

/// Why a connection must be failed, as the code and reason of the Close frame we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

impl Violation {
    const fn protocol(reason: &'static str) -> Self {
        Self {
            code: close::PROTOCOL_ERROR,
            reason,
        }
    }
}

/// How a failed read ends the session: the peer broke the protocol (we say why), or the
/// connection is simply gone (nothing can be sent).
#[derive(Debug)]
pub enum ReadFailure {
    Violation(Violation),
    Gone(String),
}

/// Translates fastwebsockets' reader errors into close codes.
pub fn classify_read_error(err: WebSocketError) -> ReadFailure {
    use WebSocketError as E;
    let v = match err {
        E::ReservedBitsNotZero => Violation::protocol("reserved bits set"),
        E::InvalidValue => Violation::protocol("reserved opcode"),
        E::ControlFrameFragmented => Violation::protocol("fragmented control frame"),
        E::PingFrameTooLarge => Violation::protocol("control frame over 125 bytes"),
        E::InvalidFragment | E::InvalidContinuationFrame => {
            Violation::protocol("bad fragmentation")
        }
        E::InvalidCloseFrame | E::InvalidCloseCode => Violation::protocol("bad close frame"),
        E::FrameTooLarge => Violation {
            code: close::TOO_BIG,
            reason: "message too big",
        },
        E::InvalidUTF8 => Violation {
            code: close::INVALID_PAYLOAD,
            reason: "invalid UTF-8",
        },
        E::UnexpectedEOF => {
            return ReadFailure::Gone("connection closed without a Close frame".into())
        }
        E::IoError(e) => match e.get_ref().and_then(|e| e.downcast_ref::<BadLength>()) {
            Some(BadLength(reason)) => Violation::protocol(reason),
            None => return ReadFailure::Gone(e.to_string()),
        },
        other => return ReadFailure::Gone(other.to_string()),
    };
    ReadFailure::Violation(v)
}

/// What a valid frame means to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A piece of a Text or Binary message; `opcode` is the message's, also on continuations.
    Data {
        opcode: OpCode,
        fin: bool,
    },
    Ping,
    Pong,
    /// `code` is `None` for an empty Close.
    Close {
        code: Option<u16>,
    },
}

/// Whether the peer on this leg must mask its frames (a client) or must not (a server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Server,
}

/// Per-connection validation state: the message being assembled, its size, and the UTF-8 state
/// of a fragmented text message.
#[derive(Debug)]
pub struct FrameValidator {
    peer: Peer,
    max_message: usize,
    message: Option<(OpCode, usize)>,
    utf8: Utf8Stream,
}

impl FrameValidator {
    pub fn new(peer: Peer, max_message: usize) -> Self {
        Self {
            peer,
            max_message,
            message: None,
            utf8: Utf8Stream::default(),
        }
    }

    /// The limit to hand to fastwebsockets' reader, so a frame header announcing more than a
    /// whole message may hold is refused before its payload is buffered (its own test is `>=`).
    pub fn frame_limit(&self) -> usize {
        self.max_message.saturating_add(1)
    }

    pub fn check(&mut self, frame: &InFrame) -> Result<FrameKind, Violation> {
        self.check_mask(frame.masked)?;
        let len = frame.payload.len();
        match frame.opcode {
            OpCode::Ping | OpCode::Pong | OpCode::Close => {
                // Fragmented control frames are refused by fastwebsockets already.
                if len > 125 {
                    return Err(Violation::protocol("control frame over 125 bytes"));
                }
                match frame.opcode {
                    OpCode::Ping => Ok(FrameKind::Ping),
                    OpCode::Pong => Ok(FrameKind::Pong),
                    _ => check_close(&frame.payload),
                }
            }
            // An unfragmented text frame was validated by fastwebsockets' reader.
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                self.data(frame.fin, frame.opcode, &frame.payload, false)
            }
        }
    }

    /// [`Self::check`] for a data frame that no reader has seen: one taken where the parked
    /// read left it (see [`super::burst`]), its payload already unmasked. Whole text frames
    /// are checked for UTF-8 here too.
    pub fn check_data(
        &mut self,
        fin: bool,
        opcode: OpCode,
        masked: bool,
        payload: &[u8],
    ) -> Result<FrameKind, Violation> {
        self.check_mask(masked)?;
        self.data(fin, opcode, payload, true)
    }

    fn data(
        &mut self,
        fin: bool,
        opcode: OpCode,
        payload: &[u8],
        whole_text_unchecked: bool,
    ) -> Result<FrameKind, Violation> {
        let kind = self.data_head(fin, opcode, payload.len())?;
        if let FrameKind::Data {
            opcode: OpCode::Text,
            ..
        } = kind
        {
            match (opcode, fin) {
                (OpCode::Text, true) => {
                    if whole_text_unchecked && simdutf8::basic::from_utf8(payload).is_err() {
                        return Err(INVALID_UTF8);
                    }
                }
                (OpCode::Text, false) => {
                    self.utf8 = Utf8Stream::default();
                    self.utf8.feed(payload, false)?;
                }
                _ => self.utf8.feed(payload, fin)?,
            }
        }
        Ok(kind)
    }

    /// Whether a data frame with this opcode would be binary, so its payload can be streamed
    /// (see [`super::stream`]) rather than read whole: a Binary frame, or a Continuation of a
    /// binary message.
    pub fn is_binary(&self, opcode: OpCode) -> bool {
        match opcode {
            OpCode::Binary => true,
            OpCode::Continuation => matches!(self.message, Some((OpCode::Binary, _))),
            _ => false,
        }
    }

    /// The checks of a binary frame streamed rather than read whole, made on its header alone:
    /// masking, message sequence and size. Binary payloads need no others.
    pub fn check_head(
        &mut self,
        fin: bool,
        opcode: OpCode,
        masked: bool,
        len: u64,
    ) -> Result<FrameKind, Violation> {
        self.check_mask(masked)?;
        self.data_head(fin, opcode, usize::try_from(len).unwrap_or(usize::MAX))
    }

    fn check_mask(&self, masked: bool) -> Result<(), Violation> {
        let must_mask = self.peer == Peer::Client;
        if masked == must_mask {
            Ok(())
        } else {
            Err(Violation::protocol(if must_mask {
                "client frames must be masked"
            } else {
                "server frames must not be masked"
            }))
        }
    }

    /// Sequence and size of a Text, Binary or Continuation frame of `len` payload bytes.
    fn data_head(&mut self, fin: bool, opcode: OpCode, len: usize) -> Result<FrameKind, Violation> {
        if opcode == OpCode::Continuation {
            let Some((opcode, so_far)) = self.message else {
                return Err(Violation::protocol("continuation without a message"));
            };
            let total = so_far.saturating_add(len);
            self.check_size(total)?;
            self.message = if fin { None } else { Some((opcode, total)) };
            return Ok(FrameKind::Data { opcode, fin });
        }
        if self.message.is_some() {
            return Err(Violation::protocol("new message inside a fragmented one"));
        }
        self.check_size(len)?;
        if !fin {
            self.message = Some((opcode, len));
        }
        Ok(FrameKind::Data { opcode, fin })
    }

    fn check_size(&self, len: usize) -> Result<(), Violation> {
        if len > self.max_message {
            Err(Violation {
                code: close::TOO_BIG,
                reason: "message too big",
            })
        } else {
            Ok(())
        }
    }
}

fn check_close(payload: &[u8]) -> Result<FrameKind, Violation> {
    match payload.len() {
        0 => Ok(FrameKind::Close { code: None }),
        1 => Err(Violation::protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close::is_valid_received(code) {
                return Err(Violation::protocol("invalid close code"));
            }
            if simdutf8::basic::from_utf8(&payload[2..]).is_err() {
                return Err(Violation {
                    code: close::INVALID_PAYLOAD,
                    reason: "invalid UTF-8 in close reason",
                });
            }
            Ok(FrameKind::Close { code: Some(code) })
        }
    }
}

const INVALID_UTF8: Violation = Violation {
    code: close::INVALID_PAYLOAD,
    reason: "invalid UTF-8",
};

/// UTF-8 validation of a text message that arrives in pieces: a code point may be split between
/// fragments, so up to three bytes are carried over. Invalid bytes are reported as soon as they
/// are seen (fail fast), not when the message ends.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: [u8; 4],
    pending_len: usize,
}

impl Utf8Stream {
    pub fn feed(&mut self, mut data: &[u8], fin: bool) -> Result<(), Violation> {
        if self.pending_len > 0 {
            let width = utf8_width(self.pending[0]);
            let take = (width - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            match simdutf8::compat::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(INVALID_UTF8),
                Err(_) => {
                    // Still incomplete: the fragment was shorter than the rest of the code point.
                    return if fin { Err(INVALID_UTF8) } else { Ok(()) };
                }
            }
        }
        match simdutf8::compat::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(INVALID_UTF8),
            Err(e) => {
                let rest = &data[e.valid_up_to()..];
                if fin {
                    return Err(INVALID_UTF8);
                }
                self.pending[..rest.len()].copy_from_slice(rest);
                self.pending_len = rest.len();
                Ok(())
            }
        }
    }
}

fn utf8_width(first: u8) -> usize {
    match first {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: OpCode, masked: bool, payload: &[u8]) -> InFrame {
        InFrame {
            fin,
            opcode,
            masked,
            payload: BytesMut::from(payload),
        }
    }

    #[test]
    fn unmasked_client_frame_is_a_protocol_error() {
        let mut v = FrameValidator::new(Peer::Client, 1024);
        let err = v
            .check(&frame(true, OpCode::Text, false, b"hi"))
            .unwrap_err();
        assert_eq!(err.code, 1002);
        let mut v = FrameValidator::new(Peer::Server, 1024);
        let err = v
            .check(&frame(true, OpCode::Text, true, b"hi"))
            .unwrap_err();
        assert_eq!(err.code, 1002);
    }

    #[test]
    fn oversized_pong_and_close_are_protocol_errors() {
        let mut v = FrameValidator::new(Peer::Client, 1 << 20);
        assert_eq!(
            v.check(&frame(true, OpCode::Pong, true, &[0; 126]))
                .unwrap_err()
                .code,
            1002
        );
        let mut close = vec![0x03, 0xE8];
        close.extend_from_slice(&[b'a'; 124]);
        assert_eq!(
            v.check(&frame(true, OpCode::Close, true, &close))
                .unwrap_err()
                .code,
            1002
        );
        assert_eq!(
            v.check(&frame(true, OpCode::Pong, true, &[0; 125])),
            Ok(FrameKind::Pong)
        );
    }

    #[test]
    fn message_cap_counts_all_fragments() {
        let mut v = FrameValidator::new(Peer::Client, 10);
        assert!(v
            .check(&frame(false, OpCode::Binary, true, &[0; 6]))
            .is_ok());
        let err = v
            .check(&frame(true, OpCode::Continuation, true, &[0; 5]))
            .unwrap_err();
        assert_eq!(err.code, 1009);
        let mut v = FrameValidator::new(Peer::Client, 10);
        assert_eq!(v.frame_limit(), 11);
        assert!(v
            .check(&frame(false, OpCode::Binary, true, &[0; 6]))
            .is_ok());
        assert_eq!(
            v.check(&frame(true, OpCode::Continuation, true, &[0; 4])),
            Ok(FrameKind::Data {
                opcode: OpCode::Binary,
                fin: true
            })
        );
    }

    #[test]
    fn fragmentation_order_is_enforced() {
        let mut v = FrameValidator::new(Peer::Client, 100);
        assert_eq!(
            v.check(&frame(true, OpCode::Continuation, true, b"x"))
                .unwrap_err()
                .code,
            1002
        );
        assert!(v.check(&frame(false, OpCode::Text, true, b"a")).is_ok());
        // Control frames may be interleaved with fragments.
        assert_eq!(
            v.check(&frame(true, OpCode::Ping, true, b"")),
            Ok(FrameKind::Ping)
        );
        assert_eq!(
            v.check(&frame(true, OpCode::Text, true, b"b"))
                .unwrap_err()
                .code,
            1002
        );
    }

    #[test]
    fn utf8_split_across_fragments() {
        let euro = "€".as_bytes(); // E2 82 AC
        let mut v = FrameValidator::new(Peer::Client, 100);
        assert!(v
            .check(&frame(false, OpCode::Text, true, &euro[..1]))
            .is_ok());
        assert!(v
            .check(&frame(false, OpCode::Continuation, true, &euro[1..2]))
            .is_ok());
        assert!(v
            .check(&frame(true, OpCode::Continuation, true, &euro[2..]))
            .is_ok());

        // Invalid continuation byte is seen in the fragment that carries it.
        let mut v = FrameValidator::new(Peer::Client, 100);
        assert!(v.check(&frame(false, OpCode::Text, true, &[0xE2])).is_ok());
        let err = v
            .check(&frame(false, OpCode::Continuation, true, &[0x28]))
            .unwrap_err();
        assert_eq!(err.code, 1007);

        // A message ending inside a code point is invalid.
        let mut v = FrameValidator::new(Peer::Client, 100);
        assert!(v.check(&frame(false, OpCode::Text, true, b"ok")).is_ok());
        let err = v
            .check(&frame(true, OpCode::Continuation, true, &euro[..2]))
            .unwrap_err();
        assert_eq!(err.code, 1007);
    }

    #[test]
    fn close_codes_and_reasons() {
        let mut v = FrameValidator::new(Peer::Client, 100);
        assert_eq!(
            v.check(&frame(true, OpCode::Close, true, b"")),
            Ok(FrameKind::Close { code: None })
        );
        assert_eq!(
            v.check(&frame(true, OpCode::Close, true, &[3]))
                .unwrap_err()
                .code,
            1002
        );
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000] {
            let err = v
                .check(&frame(true, OpCode::Close, true, &bad.to_be_bytes()))
                .unwrap_err();
            assert_eq!(err.code, 1002, "code {bad}");
        }
        for good in [1000u16, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert_eq!(
                v.check(&frame(true, OpCode::Close, true, &good.to_be_bytes())),
                Ok(FrameKind::Close { code: Some(good) })
            );
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.extend_from_slice(&[0xFF, 0xFE]);
        assert_eq!(
            v.check(&frame(true, OpCode::Close, true, &bad_reason))
                .unwrap_err()
                .code,
            1007
        );
    }
}
