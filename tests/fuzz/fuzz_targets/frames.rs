//! The client byte stream of an echo session, read exactly the way `wsgate::ws::echo` reads it:
//! parked on wsgate's `LegRead` until bytes come; the whole small data frames at the start of
//! the parked bytes walked in place (`wsgate::ws::burst`: `Whole::at`, then `Whole::open`); if
//! the walk took none, fastwebsockets' split reader (server role, auto-close and auto-pong off,
//! the validator's frame limit) one `next_frame` at a time until the byte count says its buffer
//! is empty; then parked again. Every frame goes through a client-side `FrameValidator`, read
//! errors through `classify_read_error`. The cap on a
//! message is 1024 bytes; the bytes arrive 1, 3, 64 or 4096 at a time (by input length), as
//! does the parked read, so headers and payloads also arrive split across reads and parks.
//!
//! Invariants, on every frame the validator accepts: never panics; the frame was masked;
//! control frames are final and at most 125 bytes; a Close has a valid code (or none) and a
//! UTF-8 reason; continuations belong to an open message and new messages do not start inside
//! one; the data payloads of a message add up to at most the cap; the text of a message is
//! valid UTF-8 once it completes, and no fragment is accepted after invalid UTF-8 was seen
//! (only an unfinished code point may be pending). Refusals carry 1002, 1007 or 1009, and a
//! 1009 from the validator only for a message really over the cap. Reading stops at the first
//! refusal or Close, as a session does. Parking loses nothing: the frames read and walked add
//! up, byte for byte, to the input consumed.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use fastwebsockets::{OpCode, Role};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::runtime::{Builder, Runtime};
use wsgate::ws::burst::Whole;
use wsgate::ws::frames::{
    classify_read_error, FrameKind, FrameValidator, Peer, ReadFailure, Violation,
};
use wsgate::ws::io::{wire_len, LegRead};
use wsgate::ws::session::{configure_reader, next_frame};

const CAP: usize = 1024;

thread_local! {
    static RUNTIME: Runtime = Builder::new_current_thread().build().expect("tokio runtime");
}

fuzz_target!(|data: &[u8]| {
    RUNTIME.with(|rt| rt.block_on(session(data)));
});

/// The message being assembled, as the harness sees it (apart from the validator's own state).
struct Message {
    opcode: OpCode,
    len: usize,
    text: Vec<u8>,
}

fn valid_close_code(code: u16) -> bool {
    (1000..=1003).contains(&code) || (1007..=1014).contains(&code) || (3000..=4999).contains(&code)
}

fn refusal_code(code: u16) {
    assert!(
        matches!(code, 1002 | 1007 | 1009),
        "refused with close code {code}"
    );
}

/// The client's bytes, at most `chunk` per read, as a slow network would deliver them.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

async fn session(data: &[u8]) {
    let chunk = [1, 3, 64, 4096][data.len() % 4];
    let mut raw = LegRead::new(Trickle { data, chunk }, chunk);
    let meter = raw.meter();
    let mut validator = FrameValidator::new(Peer::Client, CAP);
    // Wire bytes of the frames read through a reader (against `meter`), and of those walked.
    let mut consumed = 0u64;
    let mut walked = 0u64;
    let mut message: Option<Message> = None;
    'parked: loop {
        match raw.wait_for_data().await {
            Ok(true) => {}
            _ => {
                assert_eq!(
                    consumed + walked,
                    data.len() as u64,
                    "bytes lost between frames"
                );
                return;
            }
        }
        let parked = raw.parked_mut().expect("bytes came");
        let mut at = 0;
        while let Some(f) = Whole::at(&parked[at..]) {
            let frame = &mut parked[at..at + f.wire()];
            at += f.wire();
            match f.open(frame, &mut validator) {
                Ok(kind) => {
                    assert!(f.mask.is_some(), "accepted an unmasked client frame");
                    accepted_data(kind, f.fin, f.opcode, &frame[f.head..], &mut message)
                }
                Err(v) => return refused(v, &message, f.opcode, f.payload),
            }
        }
        raw.consume(at);
        walked += at as u64;
        if at > 0 {
            continue 'parked;
        }
        let (rd, _) =
            fastwebsockets::after_handshake_split(&mut raw, tokio::io::sink(), Role::Server);
        let rd = configure_reader(rd, &validator);
        if let Some(outcome) = frames(rd, &mut validator, &mut message, &meter, &mut consumed).await
        {
            return outcome;
        }
        continue 'parked;
    }
}

/// Reads frames from one reader until a refusal or Close (`Some`) or until its buffer is
/// empty (`None`: park).
async fn frames<R: AsyncRead + Unpin>(
    mut rd: fastwebsockets::WebSocketRead<R>,
    validator: &mut FrameValidator,
    message: &mut Option<Message>,
    meter: &wsgate::ws::io::Meter,
    consumed: &mut u64,
) -> Option<()> {
    loop {
        let (back, res) = next_frame(rd).await;
        rd = back;
        let frame = match res {
            Ok(frame) => frame,
            Err(e) => {
                if let ReadFailure::Violation(v) = classify_read_error(e) {
                    refusal_code(v.code);
                }
                return Some(());
            }
        };
        *consumed += wire_len(&frame);
        let len = frame.payload.len();
        let kind = match validator.check(&frame) {
            Ok(kind) => kind,
            Err(v) => {
                refused(v, message, frame.opcode, len);
                return Some(());
            }
        };
        assert!(
            frame.masked,
            "accepted an unmasked client frame ({:?})",
            frame.opcode
        );
        match kind {
            FrameKind::Ping | FrameKind::Pong | FrameKind::Close { .. } => {
                let expected = match kind {
                    FrameKind::Ping => OpCode::Ping,
                    FrameKind::Pong => OpCode::Pong,
                    _ => OpCode::Close,
                };
                assert_eq!(frame.opcode, expected, "classified as {kind:?}");
                assert!(frame.fin, "accepted a fragmented {:?}", frame.opcode);
                assert!(len <= 125, "accepted a {len}-byte {:?}", frame.opcode);
                if let FrameKind::Close { code } = kind {
                    match code {
                        None => assert_eq!(len, 0, "Close without a code but {len} bytes"),
                        Some(code) => {
                            assert!(len >= 2);
                            assert_eq!(
                                code,
                                u16::from_be_bytes([frame.payload[0], frame.payload[1]])
                            );
                            assert!(valid_close_code(code), "accepted close code {code}");
                            assert!(
                                std::str::from_utf8(&frame.payload[2..]).is_ok(),
                                "accepted a close reason that is not UTF-8"
                            );
                        }
                    }
                    return Some(());
                }
            }
            FrameKind::Data { .. } => {
                accepted_data(kind, frame.fin, frame.opcode, &frame.payload, message)
            }
        }
        if meter.drained(*consumed) {
            return None;
        }
    }
}

/// A refusal: its code is one a client may earn, and a 1009 is for a message really over the
/// cap. `opcode` and `len` are the refused frame's.
fn refused(v: Violation, message: &Option<Message>, opcode: OpCode, len: usize) {
    refusal_code(v.code);
    if v.code == 1009 {
        let so_far = match (message.as_ref(), opcode) {
            (Some(m), OpCode::Continuation) => m.len,
            _ => 0,
        };
        assert!(
            so_far + len > CAP,
            "1009 for a message of {} bytes",
            so_far + len
        );
    }
}

/// The invariants of an accepted (and masked) data frame, read or walked: `fin`,
/// `frame_opcode` and `payload` (unmasked) are the frame's as it came.
fn accepted_data(
    kind: FrameKind,
    fin: bool,
    frame_opcode: OpCode,
    payload: &[u8],
    message: &mut Option<Message>,
) {
    let FrameKind::Data {
        opcode,
        fin: kind_fin,
    } = kind
    else {
        panic!("{frame_opcode:?} classified as {kind:?}");
    };
    assert_eq!(kind_fin, fin);
    let len = payload.len();
    let m = match frame_opcode {
        OpCode::Text | OpCode::Binary => {
            assert!(
                message.is_none(),
                "accepted a new message inside a fragmented one"
            );
            assert_eq!(opcode, frame_opcode);
            message.insert(Message {
                opcode,
                len: 0,
                text: Vec::new(),
            })
        }
        OpCode::Continuation => {
            let Some(m) = message.as_mut() else {
                panic!("accepted a continuation outside a message");
            };
            assert_eq!(
                opcode, m.opcode,
                "continuation classified as another message's"
            );
            m
        }
        other => panic!("{other:?} classified as data"),
    };
    m.len += len;
    assert!(
        m.len <= CAP,
        "accepted {} bytes of one message (cap {CAP})",
        m.len
    );
    if m.opcode == OpCode::Text {
        m.text.extend_from_slice(payload);
        match std::str::from_utf8(&m.text) {
            Ok(_) => {}
            Err(e) if fin => {
                panic!("accepted a complete text message that is not UTF-8: {e}")
            }
            Err(e) => assert!(
                e.error_len().is_none(),
                "accepted a text fragment after invalid UTF-8: {e}"
            ),
        }
    }
    if fin {
        *message = None;
    }
}
