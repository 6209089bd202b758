//! The read side of a WebSocket leg, between the socket and fastwebsockets' reader.
//!
//! fastwebsockets gives every reader an 8 KiB buffer that it keeps (grown to the largest frame
//! seen) for the reader's whole life, and it offers no way to release it. An idle WebSocket
//! would hold it forever. So a session drops its reader whenever that buffer holds nothing
//! (every byte handed to fastwebsockets came back as part of a frame) and *parks*: it waits for
//! the next bytes with [`LegRead::wait_for_data`], which reads into a buffer lent from
//! [`crate::buffer`] only for the moment data arrives, then makes a new reader. Parked, a leg
//! holds no buffer at all.
//!
//! Knowing that the reader's buffer is empty takes one count: the bytes this wrapper handed to
//! fastwebsockets, against the bytes of the frames it returned ([`wire_len`]). That count is
//! exact only if every length is in its shortest form, which fastwebsockets does not check: a
//! padded one would make the leg never park again and keep its largest buffer for good. So the
//! wrapper follows the frame headers in what it hands over ([`Framing`]) and refuses a padded
//! length, or a 64-bit one with its top bit set, as the protocol error RFC 6455 5.2 makes it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use fastwebsockets::{Frame, WebSocketError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::frames::InFrame;
use super::stream;
use crate::buffer::{poll_read_lent, poll_write_all, Filled, Lent, BUFFER_SIZE};
use crate::wake::{Admit, Direct, Gate};

/// Wraps a leg's read half: reads at most `receive_buffer_size` (ASP.NET Core's
/// ReceiveBufferSize) while waiting for a message, serves those bytes to the next reader, and
/// counts what it delivers.
pub struct LegRead<R, G = Direct> {
    inner: R,
    cap: usize,
    /// Bytes read while parked, not yet handed to a reader.
    parked: Option<Filled>,
    /// Where in the parked buffer a frame that could stream starts: a reader is handed parked
    /// bytes only up to it (see [`Self::cut_before_streamable`]).
    cut: Option<usize>,
    /// Bytes handed to fastwebsockets so far, shared with the session, which must read it while
    /// fastwebsockets' reader holds this wrapper.
    delivered: Arc<AtomicU64>,
    /// Every read of `inner` goes through it (see [`LegRead::gated`]).
    reads: G,
    /// Where the bytes handed to fastwebsockets stand in the frame sequence.
    framing: Framing,
}

/// Follows frame boundaries through the bytes handed to fastwebsockets, to check each length's
/// form. It stays in step across readers with no reset: a reader is dropped only once it has
/// returned every byte it was handed (a frame boundary), and the bytes a session takes without
/// a reader (a burst walk, a streamed frame) are whole frames.
#[derive(Default)]
struct Framing {
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// The start of a header that has not all arrived.
    head: [u8; 10],
    head_len: u8,
}

/// A frame length fastwebsockets would take but RFC 6455 5.2 forbids; a protocol error (1002).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadLength(pub &'static str);

impl Framing {
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), BadLength> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            // The length's bytes (up to 10 with the first two); the mask is payload to this count.
            let have = usize::from(self.head_len);
            let need = if have < 2 && bytes.len() + have < 2 {
                2
            } else {
                let b1 = if have >= 2 {
                    self.head[1]
                } else {
                    bytes[1 - have]
                };
                match b1 & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                }
            };
            let take = (need - have).min(bytes.len());
            self.head[have..have + take].copy_from_slice(&bytes[..take]);
            self.head_len += take as u8;
            bytes = &bytes[take..];
            if usize::from(self.head_len) < need {
                continue; // the rest of the header comes with the next read
            }
            let head = &self.head[..need];
            let masked = head[1] & 0x80 != 0;
            let payload = match need {
                4 => {
                    let n = u64::from(u16::from_be_bytes([head[2], head[3]]));
                    if n < 126 {
                        return Err(BadLength("length not in its shortest form"));
                    }
                    n
                }
                10 => {
                    let n = u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"));
                    if n >> 63 != 0 {
                        return Err(BadLength("64-bit length with its top bit set"));
                    }
                    if n <= 0xffff {
                        return Err(BadLength("length not in its shortest form"));
                    }
                    n
                }
                _ => u64::from(head[1] & 0x7f),
            };
            self.head_len = 0;
            self.payload_left = payload + if masked { 4 } else { 0 };
        }
        Ok(())
    }
}

impl<R> LegRead<R> {
    pub fn new(inner: R, cap: usize) -> Self {
        Self::with(inner, cap)
    }
}

impl<R> LegRead<R, Gate> {
    /// For a leg whose task reads another socket too (a relay's two legs): woken by that one,
    /// it skips the read of this one rather than polling it only to find nothing (see
    /// [`crate::wake`]).
    pub fn gated(inner: R, cap: usize) -> Self {
        Self::with(inner, cap)
    }
}

impl<R, G: Admit> LegRead<R, G> {
    fn with(inner: R, cap: usize) -> Self {
        Self {
            inner,
            cap: cap.max(1),
            parked: None,
            cut: None,
            delivered: Arc::new(AtomicU64::new(0)),
            reads: G::default(),
            framing: Framing::default(),
        }
    }

    /// Hands the next reader parked bytes only up to a binary frame large enough to stream, so
    /// that the frame starts a parked read of its own (see [`super::stream`]). Called by the
    /// relay as a reader takes over from parked bytes that start with a header: only then, as
    /// the walk through a burst (see [`super::burst`]) stops before such a frame anyway.
    pub fn cut_before_streamable(&mut self) {
        self.cut = self
            .parked
            .as_ref()
            .and_then(|p| stream::cut_before_streamable(p.bytes()).map(|at| p.start + at));
    }

    /// The count of bytes handed to fastwebsockets, readable while a reader holds this wrapper.
    pub fn meter(&self) -> Meter {
        Meter(self.delivered.clone())
    }
}

impl<R: AsyncRead + Unpin, G: Admit> LegRead<R, G> {
    /// Waits until bytes can be read, holding a buffer only once they are there. `Ok(false)` is
    /// end of stream. Cancel-safe: bytes read are kept for the next reader before this returns.
    pub async fn wait_for_data(&mut self) -> io::Result<bool> {
        self.wait_for_data_max(self.cap).await
    }

    /// [`Self::wait_for_data`], reading at most `limit` bytes: a piece of a frame being
    /// streamed (see [`super::stream`]).
    pub async fn wait_for_data_max(&mut self, limit: usize) -> io::Result<bool> {
        std::future::poll_fn(|cx| {
            if self.parked.is_some() {
                return Poll::Ready(Ok(true));
            }
            let limit = limit.clamp(1, BUFFER_SIZE);
            let inner = &mut self.inner;
            match ready!(self.reads.poll(cx, |cx| poll_read_lent(inner, cx, limit)))? {
                Some(filled) => {
                    self.parked = Some(filled);
                    // A cut belongs to the buffer it was found in.
                    self.cut = None;
                    Poll::Ready(Ok(true))
                }
                None => Poll::Ready(Ok(false)),
            }
        })
        .await
    }
}

impl<R, G> LegRead<R, G> {
    /// The bytes read while parked and not yet taken, where a streamed frame is read and
    /// rewritten in place (see [`super::stream`]). Taking them with [`Self::consume`] instead
    /// of through a reader leaves the count of delivered bytes alone, as it should: none of
    /// them reach fastwebsockets.
    pub fn parked_mut(&mut self) -> Option<&mut [u8]> {
        self.parked.as_mut().map(|p| &mut p.buf[p.start..p.end])
    }

    /// Drops the first `n` parked bytes; the lent buffer goes back once none are left.
    pub fn consume(&mut self, n: usize) {
        if let Some(p) = &mut self.parked {
            p.start = (p.start + n).min(p.end);
            if p.is_empty() {
                self.parked = None;
            }
        }
    }
}

impl<R: AsyncRead + Unpin, G: Admit + Unpin> AsyncRead for LegRead<R, G> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Some(parked) = &mut this.parked {
            let mut n = parked.bytes().len().min(buf.remaining());
            if let Some(cut) = this.cut.filter(|&c| c > parked.start) {
                n = n.min(cut - parked.start);
            }
            buf.put_slice(&parked.bytes()[..n]);
            parked.start += n;
            if parked.is_empty() {
                this.parked = None; // the lent buffer goes back
            }
        } else {
            // Straight into the reader's buffer. It holds its 8 KiB, or room fastwebsockets
            // reserved for a frame whose header announced that much (within the message cap):
            // memory already committed to this frame. Capping such a read would cost a pass
            // over it (zeroing a capped sub-buffer, or a copy from a smaller one) and more
            // syscalls, and save nothing. The cap bounds the parked read, where a message
            // starts (`wait_for_data`).
            let inner = &mut this.inner;
            ready!(this.reads.poll(cx, |cx| Pin::new(inner).poll_read(cx, buf)))?;
        }
        this.framing
            .scan(&buf.filled()[before..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // One writer (this task): a plain load and store, no locked add, on the read path.
        let n = (buf.filled().len() - before) as u64;
        let total = this.delivered.load(Ordering::Relaxed) + n;
        this.delivered.store(total, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

/// Wraps a leg's write half so that frames written back to back go out in one syscall: small
/// writes are gathered in a buffer lent only until the next flush (a session flushes when it
/// has nothing more to read at once), and writes too big to gather go straight through.
/// `poll_flush` and `poll_shutdown` write out what was gathered first.
pub struct LegWrite<W> {
    inner: W,
    /// Gathered and not yet written: `buf[start..end]`.
    gathered: Option<Filled>,
}

impl<W> LegWrite<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            gathered: None,
        }
    }
}

impl<W: AsyncWrite + Unpin> LegWrite<W> {
    /// Writes `data` after what was gathered, straight from where it lies: a piece of a
    /// streamed frame, which copying into the gathering buffer would only cost a pass over.
    /// `written` counts what of `data` went out, across calls that return `Pending`.
    pub fn poll_write_through(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        written: &mut usize,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        poll_write_all(&mut self.inner, cx, data, written)
    }

    /// Gathers a whole frame when it fits in the room left, with no write future: the common
    /// case of a small frame in a burst. `false` leaves it to the writing path.
    pub fn try_gather_frame(&mut self, frame: &mut Frame<'_>) -> bool {
        let mut head = [0u8; 16];
        let n = frame.fmt_head(&mut head);
        let total = n + frame.payload.len();
        if total > self.room() {
            return false;
        }
        self.gather(&head[..n]);
        self.gather(&frame.payload);
        true
    }

    /// Writes out what was gathered; the buffer goes back once it is all out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(g) = &mut self.gathered {
            ready!(g.poll_write_out(&mut self.inner, cx))?;
            self.gathered = None;
        }
        Poll::Ready(Ok(()))
    }

    /// Room left in the gathering buffer (a whole buffer when none is held yet).
    fn room(&self) -> usize {
        self.gathered
            .as_ref()
            .map_or(BUFFER_SIZE, |g| BUFFER_SIZE - g.end)
    }

    fn gather(&mut self, data: &[u8]) {
        let g = self.gathered.get_or_insert_with(|| Filled {
            buf: Lent::take(),
            start: 0,
            end: 0,
        });
        g.buf[g.end..g.end + data.len()].copy_from_slice(data);
        g.end += data.len();
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LegWrite<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.len() > this.room() {
            ready!(this.poll_drain(cx))?;
            if data.len() > BUFFER_SIZE / 2 {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.gather(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total > this.room() {
            ready!(this.poll_drain(cx))?;
            if total > BUFFER_SIZE / 2 {
                return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.gather(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Writes frames on a leg: fastwebsockets' `Frame` formats (and masks) them straight into the
/// leg's [`LegWrite`]. fastwebsockets' own writer would copy each frame into a buffer of its own
/// first, and it would own the leg, which a relay's streamed frames write to between frames.
pub struct FrameWriter<'a, W> {
    pub io: &'a mut LegWrite<W>,
    /// wsgate is the client on this leg (a relay's upstream leg), so what it sends is masked.
    pub masks: bool,
}

impl<'a, W: AsyncWrite + Unpin> FrameWriter<'a, W> {
    /// Writes a frame, gathered with others until the next flush unless it is large.
    pub async fn write(&mut self, mut frame: Frame<'_>) -> Result<(), WebSocketError> {
        if self.masks {
            frame.mask();
        }
        if !self.io.try_gather_frame(&mut frame) {
            frame.writev(&mut *self.io).await?;
        }
        Ok(())
    }

    /// [`Self::write`] for a session that keeps its future small: a frame that fits is
    /// gathered with no future at all, and only one that does not fit comes back as a boxed
    /// write to await. An await's state is part of the session's future in every state the
    /// session has, an idle one's included: inline, this one added 232 bytes to each
    /// of a relay's two pumps.
    pub fn write_boxed<'s, 'f: 's>(
        &'s mut self,
        frame: Frame<'f>,
    ) -> Option<Pin<Box<impl Future<Output = Result<(), WebSocketError>> + use<'s, 'f, 'a, W>>>>
    {
        let mut large = self.gather(frame).err()?;
        Some(Box::pin(async move {
            large.writev(&mut *self.io).await?;
            Ok(())
        }))
    }

    /// Masks a frame if this leg needs it and gathers it with others until the next flush;
    /// hands it back, masked, when it does not fit.
    fn gather<'f>(&mut self, mut frame: Frame<'f>) -> Result<(), Frame<'f>> {
        if self.masks {
            frame.mask();
        }
        if self.io.try_gather_frame(&mut frame) {
            Ok(())
        } else {
            Err(frame)
        }
    }

    /// Writes out what was gathered.
    pub async fn flush(&mut self) -> Result<(), WebSocketError> {
        self.io.flush().await?;
        Ok(())
    }

    /// Writes a frame and flushes it.
    pub async fn send(&mut self, frame: Frame<'_>) -> Result<(), WebSocketError> {
        self.write(frame).await?;
        self.flush().await
    }

    /// Writes bytes lying ready to go, a piece of a streamed frame, without copying them.
    pub async fn write_through(&mut self, data: &[u8]) -> Result<(), WebSocketError> {
        let mut written = 0;
        std::future::poll_fn(|cx| self.io.poll_write_through(cx, data, &mut written)).await?;
        Ok(())
    }
}

/// Bytes a [`LegRead`] has handed to fastwebsockets, against the frames that came back.
pub struct Meter(Arc<AtomicU64>);

impl Meter {
    /// Whether every byte handed to the reader came back in the frames whose [`wire_len`]s add
    /// up to `consumed`: then the reader's buffer is empty and dropping it loses nothing.
    pub fn drained(&self, consumed: u64) -> bool {
        self.0.load(Ordering::Relaxed) == consumed
    }
}

/// The bytes a frame took on the wire, assuming the shortest length encoding (RFC 6455 5.2:
/// "the minimal number of bytes MUST be used"). A peer that pads its lengths makes this an
/// undercount, so its leg merely never parks: the count can never claim an empty buffer that
/// is not.
pub fn wire_len(frame: &InFrame) -> u64 {
    let len = frame.payload.len() as u64;
    let ext = match len {
        0..=125 => 0,
        126..=65535 => 2,
        _ => 8,
    };
    2 + ext + if frame.masked { 4 } else { 0 } + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use fastwebsockets::{Frame, OpCode, Payload, Role};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Headers are followed whatever the reads' sizes (a header split anywhere, a payload
    /// across many reads), and every forbidden length is refused however it arrives.
    #[test]
    fn framing_follows_headers_across_reads_and_refuses_bad_lengths() {
        let mut wire = vec![0x81, 0x85, 1, 2, 3, 4];
        wire.extend([0u8; 5]);
        wire.extend([0x82, 126, 0, 200]);
        wire.extend([0u8; 200]);
        wire.extend([0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        wire.extend(vec![0u8; 70_000]);
        wire.extend([0x89, 0x80, 9, 9, 9, 9]);
        for size in (1..=16).chain([1000, wire.len()]) {
            let mut f = Framing::default();
            for read in wire.chunks(size) {
                f.scan(read).unwrap();
            }
            assert_eq!((f.payload_left, f.head_len), (0, 0), "reads of {size}");
        }
        let bad: [&[u8]; 4] = [
            &[0x81, 126, 0, 125],
            &[0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
            &[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
        ];
        for bytes in bad {
            for size in 1..=bytes.len() {
                let mut f = Framing::default();
                let good_first = [0x81, 0x00];
                f.scan(&good_first).unwrap();
                let refused = bytes.chunks(size).try_for_each(|read| f.scan(read));
                assert!(refused.is_err(), "{bytes:?} in reads of {size}");
            }
        }
    }

    #[tokio::test]
    async fn the_read_that_waits_for_a_message_takes_at_most_the_cap() {
        let data = vec![7u8; 10_000];
        let mut r = LegRead::new(&data[..], 4096);
        let meter = r.meter();
        assert!(r.wait_for_data().await.unwrap());
        let mut buf = Vec::with_capacity(20_000);
        let n = r.read_buf(&mut buf).await.unwrap();
        assert_eq!(n, 4096, "what the parked read took, and no more");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(n + rest.len(), 10_000);
        assert!(meter.drained(10_000));
    }

    const LENS: [usize; 7] = [0, 5, 125, 126, 3000, 70_000, 1];

    fn wire(i: usize, len: usize) -> Vec<u8> {
        let payload = vec![b'a' + i as u8; len];
        let mut frame = Frame::new(
            true,
            OpCode::Binary,
            Some([1, 2, 3, 4]),
            Payload::Owned(payload),
        );
        frame.mask();
        let mut head = [0u8; 14];
        let n = frame.fmt_head(&mut head);
        let mut out = head[..n].to_vec();
        out.extend_from_slice(&frame.payload);
        out
    }

    /// Reads LENS's frames the way a session does: park, make a reader, take frames from it
    /// until the count says its buffer is empty. `sent` is called before each park and may
    /// write the next frame. Returns how many times it parked.
    async fn read_all(
        leg: &mut LegRead<tokio::io::DuplexStream>,
        mut before_park: impl FnMut(usize),
    ) -> usize {
        let meter = leg.meter();
        let mut consumed = 0;
        let mut frames = LENS.into_iter().enumerate().peekable();
        let mut parks = 0;
        while let Some(&(next, _)) = frames.peek() {
            before_park(next);
            assert!(leg.wait_for_data().await.unwrap());
            parks += 1;
            let (mut rd, _) =
                fastwebsockets::after_handshake_split(&mut *leg, tokio::io::sink(), Role::Server);
            rd.set_max_message_size(1 << 20);
            let mut no_send =
                |_: Frame<'_>| std::future::ready(Ok::<(), std::convert::Infallible>(()));
            for (i, len) in frames.by_ref() {
                let frame = InFrame::from_frame(rd.read_frame(&mut no_send).await.unwrap());
                assert_eq!(
                    frame.payload,
                    BytesMut::from(&vec![b'a' + i as u8; len][..])
                );
                consumed += wire_len(&frame);
                if meter.drained(consumed) {
                    break;
                }
            }
        }
        parks
    }

    #[tokio::test]
    async fn a_reader_is_dropped_only_when_its_buffer_is_empty() {
        // Frames one at a time: the reader's buffer empties after each, so each is read parked.
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut leg = LegRead::new(ours, 4096);
        let parks = read_all(&mut leg, |i| {
            let bytes = wire(i, LENS[i]);
            write_now(&mut peer, &bytes);
        })
        .await;
        assert_eq!(parks, LENS.len());
        drop(peer);
        assert!(!leg.wait_for_data().await.unwrap(), "end of stream");

        // All at once: frames left in the reader's buffer keep it alive; nothing is lost.
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let all: Vec<u8> = LENS
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| wire(i, l))
            .collect();
        peer.write_all(&all).await.unwrap();
        let mut leg = LegRead::new(ours, 4096);
        let parks = read_all(&mut leg, |_| {}).await;
        assert!(parks < LENS.len(), "a reader holding frames was dropped");
    }

    /// A leg's reads go through its gate (see [`crate::wake`]). When tokio refuses a read
    /// because the task spent its budget, it wakes the gate's waker, and the next poll reads.
    #[tokio::test(flavor = "current_thread")]
    async fn a_read_refused_for_the_tasks_budget_is_polled_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peer, ours) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut peer, (ours, _)) = (peer.unwrap(), ours.unwrap());
        let mut leg = LegRead::gated(ours, 4096);
        peer.write_all(b"one").await.unwrap();
        let (mut seen, mut refused) = (Vec::new(), 0);
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while seen.len() < 6 {
                // Spend the budget, so the read is refused and must come back through the gate.
                while tokio::task::coop::has_budget_remaining() {
                    tokio::task::consume_budget().await;
                }
                let mut buf = [0u8; 16];
                let mut read = std::pin::pin!(leg.read(&mut buf));
                let n = std::future::poll_fn(|cx| {
                    let polled = read.as_mut().poll(cx);
                    refused += usize::from(polled.is_pending());
                    polled
                })
                .await
                .unwrap();
                seen.extend_from_slice(&buf[..n]);
                if seen == b"one" {
                    peer.write_all(b"two").await.unwrap();
                }
            }
        });
        read.await.expect("a refused read was never polled again");
        assert_eq!(seen, b"onetwo");
        assert!(refused >= 2, "each read was refused once: {refused}");
    }

    #[tokio::test]
    async fn small_writes_are_gathered_until_flushed_and_big_ones_pass_through() {
        use tokio::io::AsyncWriteExt;
        let (peer, ours) = tokio::io::duplex(1 << 20);
        let mut w = LegWrite::new(ours);
        let mut r = LegRead::new(peer, 1 << 20);
        w.write_all(b"one ").await.unwrap();
        w.write_all(b"two ").await.unwrap();
        assert!(w.gathered.is_some(), "held until the flush");
        w.flush().await.unwrap();
        assert!(w.gathered.is_none(), "the buffer went back");
        let mut got = [0u8; 8];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two ");
        let big = vec![9u8; BUFFER_SIZE * 2];
        w.write_all(b"head").await.unwrap();
        w.write_all(&big).await.unwrap();
        w.shutdown().await.unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(&rest[..4], b"head");
        assert_eq!(&rest[4..], &big[..]);
    }

    /// Writes into a duplex whose buffer has room, without awaiting (the reader runs later).
    fn write_now(peer: &mut tokio::io::DuplexStream, bytes: &[u8]) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut written = 0;
        while written < bytes.len() {
            match tokio::io::AsyncWrite::poll_write(
                Pin::new(&mut *peer),
                &mut cx,
                &bytes[written..],
            ) {
                Poll::Ready(Ok(n)) => written += n,
                other => panic!("duplex write: {other:?}"),
            }
        }
    }
}
