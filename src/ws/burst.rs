//! Small data frames taken where the parked read left them, without fastwebsockets' reader.
//!
//! Under load a leg wakes to a burst of small frames lying whole in the parked buffer (see
//! [`super::io`]). Through fastwebsockets' reader each of them cost a reader with its own
//! 8 KiB buffer, a copy into it, a `BytesMut` of its own, and formatting back into a frame:
//! most of the 3,200 user instructions a relayed 20 B echo took (callgrind), where nginx copies
//! bytes. So a session walks such a burst here first: each header is parsed, the payload
//! unmasked in place and checked by the session's [`FrameValidator`], and the frame goes on
//! from where it lies (a relay only puts its own masking key in the header). A relay unmasks
//! and masks a binary payload again in one pass, as it does a streamed one (see
//! [`super::stream`]): no check reads a binary payload's bytes.
//!
//! The walk takes Text, Binary and Continuation frames only, and only whole ones under
//! [`STREAM_MIN`] with no reserved bit and their length in its shortest form. It stops at
//! anything else (a control frame, a frame the read cut short, a reserved bit or opcode, a
//! frame large enough to stream), and the reader takes over at that frame boundary, with the
//! checks that refuse what must be refused. So what a peer may send is decided in one place.

use fastwebsockets::OpCode;
use rand::RngCore;

use super::frames::{FrameKind, FrameValidator, Violation};
use super::stream::STREAM_MIN;

/// A data frame lying whole at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    /// Bytes the header takes, masking key included.
    pub head: usize,
    pub payload: usize,
}

impl Whole {
    /// Bytes the frame takes on the wire.
    pub fn wire(&self) -> usize {
        self.head + self.payload
    }

    /// The frame at the start of `bytes`, if the walk takes it (see the module's doc).
    pub fn at(bytes: &[u8]) -> Option<Whole> {
        let [b0, b1, ..] = *bytes else {
            return None;
        };
        if b0 & 0x70 != 0 {
            return None;
        }
        let opcode = match b0 & 0x0f {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            _ => return None,
        };
        // Lengths in their shortest form only: under STREAM_MIN the 64-bit form never is, and
        // the 16-bit one is from 126 on.
        let (payload, len_bytes) = match b1 & 0x7f {
            127 => return None,
            126 => {
                let [_, _, hi, lo, ..] = *bytes else {
                    return None;
                };
                let n = usize::from(u16::from_be_bytes([hi, lo]));
                if n < 126 || n as u64 >= STREAM_MIN {
                    return None;
                }
                (n, 4)
            }
            n => (usize::from(n), 2),
        };
        let masked = b1 & 0x80 != 0;
        let head = len_bytes + if masked { 4 } else { 0 };
        if bytes.len() < head + payload {
            return None;
        }
        let mask = masked.then(|| {
            let k = &bytes[head - 4..head];
            [k[0], k[1], k[2], k[3]]
        });
        Some(Whole {
            fin: b0 & 0x80 != 0,
            opcode,
            mask,
            head,
            payload,
        })
    }

    /// Unmasks the payload of this frame, which `frame` holds exactly, in place and checks it:
    /// what the reader path's [`FrameValidator::check`] would say of it. Always inlined: left a
    /// call (it has three callers), it cost a relayed 20 B echo 50 more instructions
    /// (callgrind).
    #[inline(always)]
    pub fn open(
        &self,
        frame: &mut [u8],
        validator: &mut FrameValidator,
    ) -> Result<FrameKind, Violation> {
        let payload = &mut frame[self.head..];
        if let Some(key) = self.mask {
            fastwebsockets::unmask(payload, key);
        }
        validator.check_data(self.fin, self.opcode, self.mask.is_some(), payload)
    }

    /// Masks the opened payload again with `key` and puts the key in the header, which keeps
    /// its size: a relay masks towards the app exactly what the client masked towards it.
    pub fn remask(&self, frame: &mut [u8], key: [u8; 4]) {
        debug_assert!(
            self.mask.is_some(),
            "a header without a key has no room for one"
        );
        frame[self.head - 4..self.head].copy_from_slice(&key);
        fastwebsockets::unmask(&mut frame[self.head..], key);
    }

    /// What a relay does with a frame: [`Self::open`], and [`Self::remask`] with a key from
    /// `keys` if there are keys (towards the app). A binary payload is checked by its header
    /// alone, so both are done in one pass over it, with the one key that unmasks with the
    /// client's key and masks with the new one (XOR is its own inverse); a text payload is
    /// read for UTF-8 in between, and takes two.
    pub fn relay(
        &self,
        frame: &mut [u8],
        validator: &mut FrameValidator,
        keys: Option<&mut impl RngCore>,
    ) -> Result<FrameKind, Violation> {
        let Some(keys) = keys else {
            return self.open(frame, validator);
        };
        let key = keys.next_u32().to_ne_bytes();
        if !validator.is_binary(self.opcode) {
            let kind = self.open(frame, validator)?;
            self.remask(frame, key);
            return Ok(kind);
        }
        let payload = &mut frame[self.head..];
        let kind = validator.check_data(self.fin, self.opcode, self.mask.is_some(), payload)?;
        // Checked: the client's frame came masked, so its header has room for `key`.
        let from = self.mask.unwrap_or_default();
        let both = u32::from_ne_bytes(from) ^ u32::from_ne_bytes(key);
        fastwebsockets::unmask(payload, both.to_ne_bytes());
        frame[self.head - 4..self.head].copy_from_slice(&key);
        Ok(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::close;
    use crate::ws::frames::Peer;

    fn wire(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let m = if mask.is_some() { 0x80 } else { 0 };
        let mut out = vec![b0];
        match payload.len() {
            n @ 0..=125 => out.push(m | n as u8),
            n => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend(mask.iter().flatten());
        let mut body = payload.to_vec();
        if let Some(key) = mask {
            fastwebsockets::unmask(&mut body, key);
        }
        out.extend(body);
        out
    }

    #[test]
    fn the_walk_takes_whole_small_data_frames_and_nothing_else() {
        let key = Some([9, 8, 7, 6]);
        let text = wire(0x81, b"hello", key);
        assert_eq!(
            Whole::at(&text),
            Some(Whole {
                fin: true,
                opcode: OpCode::Text,
                mask: key,
                head: 6,
                payload: 5
            })
        );
        let long = wire(0x02, &[1; 300], None);
        let w = Whole::at(&long).unwrap();
        assert_eq!(
            (w.fin, w.opcode, w.head, w.wire()),
            (false, OpCode::Binary, 4, 304)
        );
        assert_eq!(
            Whole::at(&wire(0x80, b"", key)).unwrap().opcode,
            OpCode::Continuation
        );
        // Cut short anywhere, it waits for the reader.
        for n in 0..text.len() {
            assert_eq!(Whole::at(&text[..n]), None, "{n} bytes");
        }
        // Control frames, reserved bits and opcodes: the reader's business.
        for b0 in [0x88, 0x89, 0x8A, 0xC1, 0xA1, 0x91, 0x83, 0x8B] {
            assert_eq!(Whole::at(&wire(b0, b"x", key)), None, "{b0:#x}");
        }
        // A 16-bit length for what 7 bits hold, or any 64-bit length, is not the shortest form.
        let mut padded = vec![0x82, 126, 0, 5];
        padded.extend_from_slice(b"hello");
        assert_eq!(Whole::at(&padded), None);
        let mut wide = vec![0x82, 127];
        wide.extend_from_slice(&5u64.to_be_bytes());
        wide.extend_from_slice(b"hello");
        assert_eq!(Whole::at(&wide), None);
        // A frame that could stream is left to the relay's streaming.
        let big = wire(0x82, &vec![0; STREAM_MIN as usize], None);
        assert_eq!(Whole::at(&big), None);
    }

    /// Keys known in advance, to compare a relayed frame with the one expected.
    struct Fixed(u32);

    impl RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            self.0
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.0)
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(0x5a);
        }
    }

    #[test]
    fn a_relayed_frame_is_checked_and_masked_again_under_the_same_header() {
        let payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let text = "héllo ".repeat(20);
        let from = [1, 2, 3, 4];
        let mut keys = Fixed(0x0807_0605);
        let to = 0x0807_0605u32.to_ne_bytes();
        let mut v = FrameValidator::new(Peer::Client, 1 << 20);
        // Binary in one pass: a first fragment, then its Continuation (binary by its message).
        // Text in two, read for UTF-8 in between.
        for (b0, body, opcode) in [
            (0x02, &payload[..], OpCode::Binary),
            (0x80, &payload[..], OpCode::Binary),
            (0x81, text.as_bytes(), OpCode::Text),
        ] {
            let mut bytes = wire(b0, body, Some(from));
            let w = Whole::at(&bytes).unwrap();
            let kind = w.relay(&mut bytes, &mut v, Some(&mut keys)).unwrap();
            let fin = b0 & 0x80 != 0;
            assert_eq!(kind, FrameKind::Data { opcode, fin }, "{b0:#x}");
            assert_eq!(bytes, wire(b0, body, Some(to)), "{b0:#x}");
        }
        // What the check refuses is refused, and a binary frame is left as it came.
        let mut bad = wire(0x81, &[0xC3; 100], Some(from));
        let w = Whole::at(&bad).unwrap();
        let refused = w.relay(&mut bad, &mut v, Some(&mut keys)).unwrap_err();
        assert_eq!(refused.code, close::INVALID_PAYLOAD);
        let mut small = FrameValidator::new(Peer::Client, 100);
        let mut over = wire(0x82, &payload, Some(from));
        let w = Whole::at(&over).unwrap();
        let refused = w.relay(&mut over, &mut small, Some(&mut keys)).unwrap_err();
        assert_eq!(refused.code, close::TOO_BIG);
        assert_eq!(over, wire(0x82, &payload, Some(from)));

        // Towards the client (no keys), what the app sent goes on unmasked, as it came.
        let mut v = FrameValidator::new(Peer::Server, 1 << 20);
        let mut bytes = wire(0x82, &payload, None);
        let w = Whole::at(&bytes).unwrap();
        w.relay(&mut bytes, &mut v, None::<&mut Fixed>).unwrap();
        assert_eq!(bytes, wire(0x82, &payload, None));
    }

    #[test]
    fn an_opened_frame_is_checked_and_remasked_under_the_same_header() {
        let mut v = FrameValidator::new(Peer::Client, 1 << 20);
        let mut bytes = wire(0x81, "héllo".as_bytes(), Some([1, 2, 3, 4]));
        let w = Whole::at(&bytes).unwrap();
        let kind = w.open(&mut bytes, &mut v).unwrap();
        assert_eq!(
            kind,
            FrameKind::Data {
                opcode: OpCode::Text,
                fin: true
            }
        );
        assert_eq!(&bytes[w.head..], "héllo".as_bytes(), "unmasked in place");
        w.remask(&mut bytes, [5, 6, 7, 8]);
        assert_eq!(bytes, wire(0x81, "héllo".as_bytes(), Some([5, 6, 7, 8])));

        // What the reader path would refuse, this one refuses: whole text frames included.
        let mut bad = wire(0x81, &[0xC3, 0x28], Some([1, 2, 3, 4]));
        let w = Whole::at(&bad).unwrap();
        assert_eq!(
            w.open(&mut bad, &mut v).unwrap_err().code,
            close::INVALID_PAYLOAD
        );
        let mut unmasked = wire(0x82, b"x", None);
        let w = Whole::at(&unmasked).unwrap();
        assert_eq!(
            w.open(&mut unmasked, &mut v).unwrap_err().code,
            close::PROTOCOL_ERROR
        );
        let mut stray = wire(0x80, b"x", Some([1, 2, 3, 4]));
        let w = Whole::at(&stray).unwrap();
        assert_eq!(
            w.open(&mut stray, &mut v).unwrap_err().code,
            close::PROTOCOL_ERROR
        );
        let mut small = FrameValidator::new(Peer::Server, 4);
        let mut over = wire(0x82, b"12345", None);
        let w = Whole::at(&over).unwrap();
        assert_eq!(
            w.open(&mut over, &mut small).unwrap_err().code,
            close::TOO_BIG
        );
    }
}
