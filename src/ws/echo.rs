//! wsgate's own WebSocket endpoint: the ASP.NET Core sample's echo, message by message, with
//! every RFC 6455 check the sample leaves to the framework.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError};
use tokio::io::AsyncWrite;

use super::burst::Whole;
use super::close;
use super::frames::{classify_read_error, FrameKind, FrameValidator, Peer, ReadFailure};
use super::io::{wire_len, FrameWriter, LegRead, LegWrite};
use super::keepalive::{KeepAlive, Tick};
use super::session::{
    close_and_linger, configure_reader, next_frame, poll_once, CloseRequest, ClosedBy, SessionEnd,
};
use crate::config::WsOptions;
use crate::limits::MessageRate;
use crate::stall::{self, Stalled};
use crate::upgraded::Stream;

enum Ending {
    /// We close with this code.
    Close(u16, &'static str, ClosedBy),
    /// The client closed; we answer with its code (1000 for an empty Close).
    Answer(Option<u16>, BytesMut),
    Gone(String),
}

/// Runs an accepted WebSocket until either side closes it or `closing` asks for 1001.
/// `message_rate` is the most messages per second the client may send (0: no limit).
pub async fn run(
    io: &mut Stream,
    opts: &WsOptions,
    message_rate: u32,
    closing: impl Future<Output = CloseRequest>,
) -> SessionEnd {
    let mut closing = pin!(closing);
    let (r, w) = io.split();
    let mut w = LegWrite::new(Stalled::new(w, stall::limit(opts)));
    let mut raw = LegRead::new(r, opts.receive_buffer_size);
    let meter = raw.meter();
    let mut validator = FrameValidator::new(Peer::Client, opts.max_message_size);
    let mut wr = FrameWriter {
        io: &mut w,
        masks: false,
    };
    let mut keepalive = KeepAlive::new(opts.keep_alive_interval, opts.keep_alive_timeout);
    let mut echoer = Echoer {
        stats: SessionEnd::new(ClosedBy::Gateway, None, ""),
        rate: MessageRate::new(message_rate),
        message: BytesMut::new(),
        close_timeout: opts.close_timeout,
    };
    // Wire bytes of the frames read so far, against what the reader was handed (`meter`).
    let mut consumed = 0u64;
    // Echoes are written as they come and flushed together once nothing more can be read at
    // once (the flush arm is polled last): one syscall for a burst, none held back.
    let mut unflushed = false;

    let ending = 'session: loop {
        // The burst's echoes go out now if the socket takes them, which spares the wait below
        // a round of polls (callgrind: 1,464 → 1,371 instructions per 20 B echo); if the socket
        // is full, the flush arm below finishes them.
        if unflushed {
            match poll_once(pin!(wr.flush())).await {
                Poll::Ready(Ok(())) => unflushed = false,
                Poll::Ready(Err(e)) => break 'session Ending::Gone(e.to_string()),
                Poll::Pending => {}
            }
        }
        // Parked (see `io`): no reader and no buffer until the client sends something.
        loop {
            tokio::select! {
                biased;
                request = &mut closing => {
                    break 'session Ending::Close(close::GOING_AWAY, request.reason(), ClosedBy::Gateway);
                }
                data = raw.wait_for_data() => match data {
                    Ok(true) => break,
                    Ok(false) => break 'session Ending::Gone("connection closed without a Close frame".into()),
                    Err(e) => break 'session Ending::Gone(e.to_string()),
                },
                tick = keepalive.tick() => {
                    if let Some(ending) = on_tick(tick, &mut wr, &mut closing, opts.close_timeout).await {
                        break 'session ending;
                    }
                    unflushed = true;
                }
                flushed = wr.flush(), if unflushed => {
                    if let Err(e) = flushed {
                        break 'session Ending::Gone(e.to_string());
                    }
                    unflushed = false;
                }
            }
        }
        // A burst of whole small data frames is echoed from where it lies (see `burst`).
        let parked = echo_parked(&mut raw, &mut validator, &mut echoer, &mut wr, &mut closing);
        match parked.await {
            Ok(0) => {}
            Ok(_) => {
                keepalive.seen();
                unflushed = true;
                continue 'session;
            }
            Err(ending) => break 'session ending,
        }
        // Reading: one reader, until its buffer holds nothing more. Boxed, as in the relay's
        // pump: in place its 288 bytes sat in every idle session, and the path is entered once
        // per run of frames the burst walk leaves, not per message.
        let (rd, _) =
            fastwebsockets::after_handshake_split(&mut raw, tokio::io::sink(), Role::Server);
        let mut reading = Box::pin(next_frame(configure_reader(rd, &validator)));
        loop {
            // The frames of a burst are taken without a round through `select!`; the other
            // arms are polled once a read must wait, and at the latest when the burst's bytes
            // are used up and the session parks.
            let (rd, res) = match poll_once(reading.as_mut()).await {
                Poll::Ready(read) => read,
                Poll::Pending => tokio::select! {
                    biased;
                    read = &mut reading => read,
                    request = &mut closing => {
                        break 'session Ending::Close(close::GOING_AWAY, request.reason(), ClosedBy::Gateway);
                    }
                    tick = keepalive.tick() => {
                        if let Some(ending) = on_tick(tick, &mut wr, &mut closing, opts.close_timeout).await {
                            break 'session ending;
                        }
                        unflushed = true;
                        continue;
                    }
                    flushed = wr.flush(), if unflushed => {
                        if let Err(e) = flushed {
                            break 'session Ending::Gone(e.to_string());
                        }
                        unflushed = false;
                        continue;
                    }
                },
            };
            let frame = match res {
                Ok(frame) => frame,
                Err(e) => break 'session read_failure(e),
            };
            keepalive.seen();
            consumed += wire_len(&frame);
            let kind = match validator.check(&frame) {
                Ok(kind) => kind,
                Err(v) => break 'session Ending::Close(v.code, v.reason, ClosedBy::Gateway),
            };
            let sent = match kind {
                FrameKind::Data { opcode, fin } => {
                    let continues = frame.opcode == OpCode::Continuation;
                    match echoer.data(fin, continues, opcode, Payload::Bytes(frame.payload)) {
                        Ok(Some(echo)) => {
                            unflushed = true;
                            match wr.write_boxed(echo) {
                                None => Ok(()),
                                Some(large) => {
                                    Box::pin(write_hearing(large, &mut closing, opts.close_timeout))
                                        .await
                                }
                            }
                        }
                        Ok(None) => Ok(()),
                        Err(ending) => break 'session ending,
                    }
                }
                FrameKind::Ping => {
                    unflushed = true;
                    match wr.write_boxed(Frame::pong(Payload::Bytes(frame.payload))) {
                        None => Ok(()),
                        Some(large) => {
                            Box::pin(write_hearing(large, &mut closing, opts.close_timeout)).await
                        }
                    }
                }
                FrameKind::Pong => Ok(()),
                FrameKind::Close { code } => {
                    let mut reason = frame.payload;
                    let _ = reason.split_to(reason.len().min(2));
                    break 'session Ending::Answer(code, reason);
                }
            };
            if let Err(ending) = sent {
                break 'session ending;
            }
            if meter.drained(consumed) {
                break; // park
            }
            reading.as_mut().set(next_frame(rd));
        }
    };

    let mut stats = echoer.stats;
    let (code, reason, closed_by) = match ending {
        Ending::Close(code, reason, by) => (code, reason.as_bytes().to_vec(), by),
        Ending::Answer(code, reason) => (
            code.unwrap_or(close::NORMAL),
            reason.to_vec(),
            ClosedBy::Client,
        ),
        Ending::Gone(why) => {
            stats.closed_by = ClosedBy::Client;
            stats.reason = why;
            return stats;
        }
    };
    close_and_linger(&mut w, &mut raw, code, &reason, opts.close_timeout).await;
    stats.code = Some(code);
    stats.closed_by = closed_by;
    stats.reason = String::from_utf8_lossy(&reason).into_owned();
    stats
}

/// Echoes the whole small data frames at the start of the parked bytes from where they lie
/// (see [`super::burst`]); the bytes taken. `Err` ends the session, after the echoes of the
/// frames before a violation.
async fn echo_parked<R, W: AsyncWrite + Unpin, C: Future<Output = CloseRequest>>(
    raw: &mut LegRead<R>,
    validator: &mut FrameValidator,
    echoer: &mut Echoer,
    wr: &mut FrameWriter<'_, W>,
    closing: &mut Pin<&mut C>,
) -> Result<usize, Ending> {
    let grace = echoer.close_timeout;
    let Some(parked) = raw.parked_mut() else {
        return Ok(0);
    };
    let (mut at, mut stop) = (0, None);
    while let Some(f) = Whole::at(&parked[at..]) {
        let frame = &mut parked[at..at + f.wire()];
        at += f.wire();
        let opcode = match f.open(frame, validator) {
            Ok(FrameKind::Data { opcode, .. }) => opcode,
            Ok(_) => unreachable!("the walk takes data frames only"),
            Err(v) => {
                stop = Some(Ending::Close(v.code, v.reason, ClosedBy::Gateway));
                break;
            }
        };
        let payload = Payload::Borrowed(&frame[f.head..]);
        let continues = f.opcode == OpCode::Continuation;
        match echoer.data(f.fin, continues, opcode, payload) {
            Ok(Some(echo)) => {
                // Gathered with the others, nothing to wait for, unless it does not fit.
                if let Some(large) = wr.write_boxed(echo) {
                    if let Err(ending) = Box::pin(write_hearing(large, closing, grace)).await {
                        stop = Some(ending);
                        break;
                    }
                }
            }
            Ok(None) => {}
            Err(ending) => {
                stop = Some(ending);
                break;
            }
        }
    }
    raw.consume(at);
    stop.map_or(Ok(at), Err)
}

/// What the echo keeps across frames, whichever way they were read.
struct Echoer {
    stats: SessionEnd,
    rate: Option<MessageRate>,
    /// Only fragmented messages are assembled here; whole frames go back without a copy.
    message: BytesMut,
    /// How long a write that must wait still has once a close is asked for.
    close_timeout: Duration,
}

impl Echoer {
    /// Takes a checked data frame of a message with this `opcode`; the echo to write once the
    /// message is complete. `continues`: the frame is a Continuation.
    fn data<'p>(
        &mut self,
        fin: bool,
        continues: bool,
        opcode: OpCode,
        payload: Payload<'p>,
    ) -> Result<Option<Frame<'p>>, Ending> {
        self.stats.bytes_in += payload.len() as u64;
        if !fin {
            self.message.extend_from_slice(&payload);
            return Ok(None);
        }
        self.stats.messages_in += 1;
        if let Some(rate) = self.rate.as_mut() {
            if !rate.allow() {
                return Err(Ending::Close(
                    close::POLICY,
                    "message rate exceeded",
                    ClosedBy::Gateway,
                ));
            }
        }
        let payload = if continues {
            self.message.extend_from_slice(&payload);
            Payload::Bytes(std::mem::take(&mut self.message))
        } else {
            payload
        };
        self.stats.messages_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        Ok(Some(Frame::new(true, opcode, None, payload)))
    }
}

async fn on_tick<W: AsyncWrite + Unpin, C: Future<Output = CloseRequest>>(
    tick: Tick,
    wr: &mut FrameWriter<'_, W>,
    closing: &mut Pin<&mut C>,
    grace: Duration,
) -> Option<Ending> {
    match tick {
        Tick::SendPing => {
            let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""));
            // Gathered: the session flushes it with its next round of polls.
            match wr.write_boxed(ping) {
                None => None,
                Some(large) => Box::pin(write_hearing(large, closing, grace)).await.err(),
            }
        }
        Tick::TimedOut => Some(Ending::Close(
            close::GOING_AWAY,
            "keep-alive timeout",
            ClosedBy::Gateway,
        )),
    }
}

/// Awaits a write that did not fit with the others (boxed, as is this, so that the session's
/// future, an idle one's included, keeps no room for a write in flight), still hearing
/// `closing` if it must wait: a close asked for meanwhile gives
/// the write `grace` (`close_timeout`) to finish, since the Close may only follow whole
/// frames, and a peer that takes nothing in that time is dropped without one. Otherwise a
/// client that stopped reading would hold its session past drains and `max_connection_age`
/// until the stall limit (see [`crate::stall`]).
async fn write_hearing<C: Future<Output = CloseRequest>>(
    write: impl Future<Output = Result<(), WebSocketError>>,
    closing: &mut Pin<&mut C>,
    grace: Duration,
) -> Result<(), Ending> {
    let gone = |e: WebSocketError| Ending::Gone(e.to_string());
    let mut write = pin!(write);
    if let Poll::Ready(written) = poll_once(write.as_mut()).await {
        return written.map_err(gone);
    }
    tokio::select! {
        biased;
        written = write.as_mut() => written.map_err(gone),
        request = closing.as_mut() => match tokio::time::timeout(grace, write).await {
            Ok(Ok(())) => Err(Ending::Close(close::GOING_AWAY, request.reason(), ClosedBy::Gateway)),
            Ok(Err(e)) => Err(gone(e)),
            Err(_) => Err(Ending::Gone(format!(
                "{} while the client was not reading",
                request.reason()
            ))),
        },
    }
}

fn read_failure(e: WebSocketError) -> Ending {
    match classify_read_error(e) {
        ReadFailure::Violation(v) => Ending::Close(v.code, v.reason, ClosedBy::Gateway),
        ReadFailure::Gone(why) => Ending::Gone(why),
    }
}
