//! The client byte stream of an echo session, read exactly the way `wsgate::ws::echo` reads it:
//! fastwebsockets' split reader (server role, auto-close and auto-pong off, the validator's
//! frame limit) over wsgate's `CappedRead`, one `next_frame` at a time, every frame through a
//! client-side `FrameValidator`, read errors through `classify_read_error`. The cap on a
//! message is 1024 bytes; the receive buffer is 1, 3, 64 or 4096 bytes (by input length) so
//! headers and payloads also arrive split across reads.
//!
//! Invariants, on every frame the validator accepts: never panics; the frame was masked;
//! control frames are final and at most 125 bytes; a Close has a valid code (or none) and a
//! UTF-8 reason; continuations belong to an open message and new messages do not start inside
//! one; the data payloads of a message add up to at most the cap; the text of a message is
//! valid UTF-8 once it completes, and no fragment is accepted after invalid UTF-8 was seen
//! (only an unfinished code point may be pending). Refusals carry 1002, 1007 or 1009, and a
//! 1009 from the validator only for a message really over the cap. Reading stops at the first
//! refusal or Close, as a session does.
#![no_main]

use fastwebsockets::{OpCode, Role};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::{Builder, Runtime};
use wsgate::ws::frames::{classify_read_error, FrameKind, FrameValidator, Peer, ReadFailure};
use wsgate::ws::io::CappedRead;
use wsgate::ws::session::next_frame;

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

async fn session(data: &[u8]) {
    let receive_buffer = [1, 3, 64, 4096][data.len() % 4];
    let mut raw = CappedRead::new(data, receive_buffer);
    let mut sink = tokio::io::sink();
    let mut validator = FrameValidator::new(Peer::Client, CAP);
    let (mut rd, _wr) = fastwebsockets::after_handshake_split(&mut raw, &mut sink, Role::Server);
    rd.set_auto_close(false);
    rd.set_auto_pong(false);
    rd.set_max_message_size(validator.frame_limit());

    let mut message: Option<Message> = None;
    loop {
        let (back, res) = next_frame(rd).await;
        rd = back;
        let frame = match res {
            Ok(frame) => frame,
            Err(e) => {
                if let ReadFailure::Violation(v) = classify_read_error(e) {
                    refusal_code(v.code);
                }
                return;
            }
        };
        let len = frame.payload.len();
        let kind = match validator.check(&frame) {
            Ok(kind) => kind,
            Err(v) => {
                refusal_code(v.code);
                if v.code == 1009 {
                    let so_far = match (&message, frame.opcode) {
                        (Some(m), OpCode::Continuation) => m.len,
                        _ => 0,
                    };
                    assert!(
                        so_far + len > CAP,
                        "1009 for a message of {} bytes",
                        so_far + len
                    );
                }
                return;
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
                    return;
                }
            }
            FrameKind::Data { opcode, fin } => {
                assert_eq!(fin, frame.fin);
                let m = match frame.opcode {
                    OpCode::Text | OpCode::Binary => {
                        assert!(
                            message.is_none(),
                            "accepted a new message inside a fragmented one"
                        );
                        assert_eq!(opcode, frame.opcode);
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
                    m.text.extend_from_slice(&frame.payload);
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
                    message = None;
                }
            }
        }
    }
}
