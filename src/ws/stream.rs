//! Large binary frames go through the relay piece by piece, under their own header.
//!
//! fastwebsockets reads a frame whole before returning it, so a relay built on its reader alone
//! holds every frame entirely (up to `max_message_size` per leg) and copies it through memory
//! that has long left the CPU's caches: a 1 MiB relayed echo cost about twice an echo's CPU,
//! 40% more than passthrough, which moves 64 KiB at a time. So the relay looks at a frame's
//! header where the parked read left it (see [`super::io`]); a binary frame announcing at least
//! [`STREAM_MIN`] bytes is checked on its header alone and then sent on as it arrives: the
//! header first, rewritten in place (the relay's own masking key towards the app), then each
//! read of its payload, unmasked and re-masked in one pass.
//!
//! Only binary payloads stream: their bytes need no checking, so nothing found in the middle
//! of one could call for a Close that the leg being written, mid-frame, can no longer carry.
//! Text keeps the whole-frame path, where UTF-8 is checked before a byte goes on. A peer that
//! vanishes (or stalls past the keep-alive timeout) in the middle of a streamed frame leaves
//! the other leg closed without a Close, as under passthrough: no frame can follow a partial one.

use fastwebsockets::OpCode;

use crate::buffer::COPY_CHUNK;

/// Payload size from which a binary frame is streamed: more than one piece.
pub const STREAM_MIN: u64 = COPY_CHUNK as u64;

/// The header of a data frame, parsed off the bytes at the start of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload: u64,
    /// Bytes the header takes on the wire.
    pub len: usize,
}

impl Head {
    /// The header at the start of `bytes`, if it is complete there and belongs to a Binary or
    /// Continuation frame of at least [`STREAM_MIN`] bytes, with no reserved bit set and its
    /// length in the shortest form. Anything else (control and text frames, small frames,
    /// reserved bits or opcodes, a header cut short) is left to fastwebsockets' reader and the
    /// usual checks, which refuse what must be refused. Whether a Continuation belongs to a
    /// binary message is the caller's to know.
    pub fn streamable(bytes: &[u8]) -> Option<Head> {
        let (&b0, &b1) = (bytes.first()?, bytes.get(1)?);
        if b0 & 0x70 != 0 {
            return None;
        }
        let opcode = match b0 & 0x0f {
            0 => OpCode::Continuation,
            2 => OpCode::Binary,
            _ => return None,
        };
        let (payload, len) = sizes(bytes)?;
        if b1 & 0x7f == 127 && (payload <= 0xffff || payload >> 63 != 0) {
            return None; // not a valid form: the reader's path refuses it (see `io`)
        }
        if payload < STREAM_MIN {
            return None;
        }
        let mask = if b1 & 0x80 != 0 {
            Some(bytes.get(len - 4..len)?.try_into().ok()?)
        } else {
            None
        };
        Some(Head {
            fin: b0 & 0x80 != 0,
            opcode,
            mask,
            payload,
            len,
        })
    }

    /// Rewrites this header, still at the start of `bytes`, as the one to send on: the same
    /// FIN, opcode and length, masked with `key` if given. The length keeps its form, so the
    /// header keeps its size when the masking does (a client's frame goes to the app masked, an
    /// app's to the client unmasked). `None` when it would not.
    pub fn rewrite(&self, bytes: &mut [u8], key: Option<[u8; 4]>) -> Option<()> {
        if key.is_some() != self.mask.is_some() {
            return None;
        }
        let head = &mut bytes[..self.len];
        if let Some(key) = key {
            head[self.len - 4..].copy_from_slice(&key);
        }
        Some(())
    }
}

/// Where, in bytes that start at a frame boundary, the first frame that could stream starts
/// after at least one other: the relay hands fastwebsockets' reader only the bytes before it,
/// so that frame begins a parked read of its own and streams, rather than being read whole
/// behind a small frame that arrived in the same read. Walks complete headers only.
pub fn cut_before_streamable(bytes: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    loop {
        let (payload, len) = sizes(bytes.get(at..)?)?;
        at = at
            .checked_add(len)?
            .checked_add(usize::try_from(payload).ok()?)?;
        if at >= bytes.len() {
            return None;
        }
        if Head::streamable(&bytes[at..]).is_some() {
            return Some(at);
        }
    }
}

/// The payload length and the header's size (masking key included) of the frame whose header
/// starts `bytes`, if its length is complete there.
fn sizes(bytes: &[u8]) -> Option<(u64, usize)> {
    let b1 = *bytes.get(1)?;
    let (payload, ext) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            2,
        ),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 8),
        n => (u64::from(n), 0),
    };
    Some((payload, 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }))
}

/// A masking key as it applies to a piece starting `offset` bytes into the payload.
pub fn key_at(key: [u8; 4], offset: u64) -> [u8; 4] {
    let r = (offset % 4) as usize;
    [key[r], key[(r + 1) % 4], key[(r + 2) % 4], key[(r + 3) % 4]]
}

/// The one key that unmasks with `from` and masks with `to` in a single pass (XOR is its own
/// inverse); `None` when neither leg is masked.
pub fn recode_key(from: Option<[u8; 4]>, to: Option<[u8; 4]>) -> Option<[u8; 4]> {
    match (from, to) {
        (None, None) => None,
        (a, b) => {
            let (a, b) = (a.unwrap_or([0; 4]), b.unwrap_or([0; 4]));
            Some([a[0] ^ b[0], a[1] ^ b[1], a[2] ^ b[2], a[3] ^ b[3]])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(b0: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
        let m = if mask.is_some() { 0x80 } else { 0 };
        let mut out = vec![b0];
        match len {
            0..=125 => out.push(m | len as u8),
            126..=65535 => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out.extend(mask.iter().flatten());
        out
    }

    #[test]
    fn large_binary_frames_stream_and_nothing_else_does() {
        let key = Some([9, 8, 7, 6]);
        let h = Head::streamable(&head(0x82, 1 << 20, key)).unwrap();
        assert_eq!(
            h,
            Head {
                fin: true,
                opcode: OpCode::Binary,
                mask: key,
                payload: 1 << 20,
                len: 14
            }
        );
        let h = Head::streamable(&head(0x00, 65_535, None)).unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.mask, h.len),
            (false, OpCode::Continuation, None, 4)
        );
        // Text, small frames, control frames, reserved bits and opcodes: the reader's business.
        assert_eq!(Head::streamable(&head(0x81, 1 << 20, key)), None);
        assert_eq!(Head::streamable(&head(0x82, STREAM_MIN - 1, key)), None);
        assert_eq!(Head::streamable(&head(0x89, 1 << 20, key)), None);
        assert_eq!(Head::streamable(&head(0xC2, 1 << 20, key)), None);
        assert_eq!(Head::streamable(&head(0x83, 1 << 20, key)), None);
        // A 64-bit length for what 16 bits hold is not the shortest form.
        let mut long = head(0x82, 1 << 20, None);
        long[2..10].copy_from_slice(&65_500u64.to_be_bytes());
        assert_eq!(Head::streamable(&long), None);
        // A header cut short is not guessed at.
        let full = head(0x82, 1 << 20, key);
        for n in 0..full.len() {
            assert_eq!(Head::streamable(&full[..n]), None, "{n} bytes");
        }
    }

    #[test]
    fn reads_are_cut_before_a_large_binary_frame_that_follows_others() {
        let key = Some([9, 8, 7, 6]);
        let mut small = head(0x81, 5, key);
        small.extend_from_slice(b"hello");
        let mut medium = head(0x82, 300, None);
        medium.extend_from_slice(&[0; 300]);
        let large = head(0x82, 1 << 20, key);
        let bytes = [small.clone(), medium.clone(), large.clone(), vec![0; 100]].concat();
        assert_eq!(
            cut_before_streamable(&bytes),
            Some(small.len() + medium.len())
        );
        // Nothing to cut: the large frame comes first, or none follows, or its header is cut short.
        assert_eq!(
            cut_before_streamable(&[large.clone(), small.clone()].concat()),
            None
        );
        assert_eq!(
            cut_before_streamable(&[small.clone(), medium.clone()].concat()),
            None
        );
        let short = [small.clone(), large[..5].to_vec()].concat();
        assert_eq!(cut_before_streamable(&short), None);
        // A large text frame is read whole, so no cut before it.
        let text = head(0x81, 1 << 20, key);
        assert_eq!(cut_before_streamable(&[small, text].concat()), None);
        // Lengths near u64::MAX end the walk instead of wrapping around.
        let mut huge = head(0x82, 1 << 20, None);
        huge[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(cut_before_streamable(&[huge, large].concat()), None);
    }

    #[test]
    fn a_rewritten_header_keeps_its_size_and_takes_the_new_key() {
        let mut bytes = head(0x02, 70_000, Some([1, 2, 3, 4]));
        bytes.extend_from_slice(b"payload");
        let h = Head::streamable(&bytes).unwrap();
        h.rewrite(&mut bytes, Some([5, 6, 7, 8])).unwrap();
        let again = Head::streamable(&bytes).unwrap();
        assert_eq!(again.mask, Some([5, 6, 7, 8]));
        assert_eq!(
            (again.fin, again.opcode, again.payload, again.len),
            (false, OpCode::Binary, 70_000, 14)
        );
        assert_eq!(&bytes[14..], b"payload");
        assert_eq!(h.rewrite(&mut bytes, None), None, "masking must not change");
    }

    #[test]
    fn one_pass_recodes_pieces_at_any_offset() {
        let (from, to) = ([1, 2, 3, 4], [0xa0, 0x0b, 0xc0, 0x0d]);
        let plain: Vec<u8> = (0..=255).collect();
        let mut sent = plain.clone();
        fastwebsockets::unmask(&mut sent, from);
        let mut expected = plain.clone();
        fastwebsockets::unmask(&mut expected, to);
        let mut pieces = sent.clone();
        let key = recode_key(Some(from), Some(to)).unwrap();
        let mut offset = 0;
        for len in [3usize, 1, 7, 64, 181] {
            let end = offset + len;
            fastwebsockets::unmask(&mut pieces[offset..end], key_at(key, offset as u64));
            offset = end;
        }
        assert_eq!(pieces, expected);
        assert_eq!(recode_key(None, None), None);
        assert_eq!(recode_key(Some(from), None), Some(from));
    }
}
