//! `latency`: open loop at a fixed rate.
//!
//! Message i is due at `start + i / rate`; a timerfd (microsecond precision, unlike tokio's
//! millisecond timer) wakes the sender `--spin` ahead of it, and the sender polls until it is
//! due, then sends it, round-robin over the connections. The payload carries the message's
//! *intended* send time, and latency is `receive time - intended time`: when the target (or the
//! sender) falls behind, the wait counts (no coordinated omission). Messages due during the warm-up are sent but not recorded.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::task::LocalSet;

use crate::client::{self, Event, FrameReader};
use crate::procfs::monotonic_ns;
use crate::LatencyArgs;

pub fn run(args: LatencyArgs) -> anyhow::Result<()> {
    if args.size < 16 {
        bail!("--size must be at least 16 bytes (timestamp and sequence number)");
    }
    if args.rate == 0 || args.connections == 0 {
        bail!("--rate and --connections must be at least 1");
    }
    let target = client::parse_url(&args.url, args.trust.ca.as_deref())?;
    let rt = crate::runtime()?;
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let mut writers = Vec::with_capacity(args.connections);
        let mut tls = None;
        let hist = Rc::new(RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        ));
        let received = Rc::new(Cell::new(0u64));
        let lost_conns = Rc::new(Cell::new(0u64));
        let done = Rc::new(Cell::new(false));

        let period_ns = 1_000_000_000 / args.rate;
        // Set once connections are open; messages due before it are not recorded.
        let record_from = Rc::new(Cell::new(u64::MAX));
        for i in 0..args.connections {
            let (stream, leftover) = client::connect(&target, None)
                .await
                .with_context(|| format!("connection {} of {}", i + 1, args.connections))?;
            if tls.is_none() {
                tls = stream.tls_info();
            }
            let (mut rh, wh) = stream.into_split();
            writers.push(wh);
            let (h, rcv, lost, dn, from) = (
                hist.clone(),
                received.clone(),
                lost_conns.clone(),
                done.clone(),
                record_from.clone(),
            );
            tokio::task::spawn_local(async move {
                let mut reader = FrameReader::new(leftover);
                loop {
                    match reader.next(&mut rh).await {
                        Ok(Event::Message(_)) => {
                            let now = monotonic_ns();
                            let head = reader.head();
                            if head.len() < 16 {
                                continue;
                            }
                            let intended = u64::from_le_bytes(head[..8].try_into().unwrap());
                            rcv.set(rcv.get() + 1);
                            if intended >= from.get() {
                                h.borrow_mut()
                                    .saturating_record(now.saturating_sub(intended).max(1));
                            }
                        }
                        _ => {
                            if !dn.get() {
                                lost.set(lost.get() + 1);
                            }
                            return;
                        }
                    }
                }
            });
        }

        let payload = vec![b'x'; args.size];
        let mut frame = client::client_frame(&payload);
        let hl = client::client_header_len(args.size);

        let start = monotonic_ns() + 10_000_000;
        record_from.set(start + args.window.warmup.as_nanos() as u64);
        let end = start + (args.window.warmup + args.window.duration).as_nanos() as u64;
        let spin_ns = args.spin.as_nanos() as u64;
        // Ticks `spin` ahead of each message: the sender then polls until the message is due.
        let timer = Timer::new(start.saturating_sub(spin_ns), period_ns)?;
        let cpu = crate::procfs::CpuWatch::start(&args.window.cpu_pids, &args.window.aux_cpu_pids)?;
        // How late the sender itself was (timer wake-up, blocked writes): part of every
        // latency figure, reported so it can be told apart from the target's share.
        let mut lag =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
        let mut seq: u64 = 0;
        let mut sent_measured: u64 = 0;
        loop {
            let intended = start + seq * period_ns;
            if intended >= end {
                break;
            }
            let now = monotonic_ns();
            if now + spin_ns < intended {
                // The tick for this message (at `intended - spin`) has not fired yet.
                timer.wait().await?;
                continue;
            }
            if now < intended {
                // Lets the readers and the I/O driver run (tokio polls the driver before a
                // yielded task runs again), so replies are timed while the sender waits too.
                tokio::task::yield_now().await;
                continue;
            }
            frame[hl..hl + 8].copy_from_slice(&intended.to_le_bytes());
            frame[hl + 8..hl + 16].copy_from_slice(&seq.to_le_bytes());
            let w = &mut writers[(seq % args.connections as u64) as usize];
            if let Err(e) = w.write_all(&frame).await {
                bail!("sending: {e}");
            }
            // Over TLS, records a full socket held back must not wait for the next message.
            if let Err(e) = w.flush().await {
                bail!("sending: {e}");
            }
            if intended >= record_from.get() {
                sent_measured += 1;
                lag.saturating_record(monotonic_ns().saturating_sub(intended).max(1));
            }
            seq += 1;
        }
        let sent_at = monotonic_ns();
        let send_window = (sent_at.saturating_sub(start)) as f64 / 1e9;
        let cpu = cpu.stop(send_window)?;
        // Wait for the last echoes (at most 2 s).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while received.get() < seq && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done.set(true);
        let h = hist.borrow();
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let measured_s = (end - record_from.get()) as f64 / 1e9;
        let mut out = serde_json::json!({
            "mode": "latency",
            "label": args.window.label,
            "url": args.url,
            "connections": args.connections,
            "size": args.size,
            "rate": args.rate,
            "window_s": measured_s,
            "sent": seq,
            "received": received.get(),
            "measured": h.len(),
            "sent_measured": sent_measured,
            "achieved_rate": h.len() as f64 / measured_s,
            "send_overrun_ms": (sent_at.saturating_sub(end)) as f64 / 1e6,
            "p50_us": us(0.50),
            "p90_us": us(0.90),
            "p99_us": us(0.99),
            "p999_us": us(0.999),
            "max_us": h.max() as f64 / 1000.0,
            "mean_us": h.mean() / 1000.0,
            "send_lag_p50_us": lag.value_at_quantile(0.5) as f64 / 1000.0,
            "send_lag_p99_us": lag.value_at_quantile(0.99) as f64 / 1000.0,
            "connections_lost": lost_conns.get(),
        });
        cpu.fill(&mut out);
        if let Some(tls) = tls {
            out["tls"] = serde_json::json!(tls);
        }
        println!("{out}");
        if h.is_empty() {
            bail!("no message was echoed during the window");
        }
        if h.len() < sent_measured {
            eprintln!(
                "wsgate-bench: {} of {} measured messages never came back",
                sent_measured - h.len(),
                sent_measured
            );
        }
        Ok(())
    })
}

/// A periodic CLOCK_MONOTONIC timerfd: `wait` returns once at least one period has elapsed since
/// the last call.
struct Timer {
    fd: AsyncFd<OwnedFd>,
}

impl Timer {
    fn new(first_ns: u64, period_ns: u64) -> anyhow::Result<Self> {
        let ts = |ns: u64| libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: plain syscalls; the fd is owned by the OwnedFd from here on.
        let fd = unsafe {
            let raw = libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            );
            if raw < 0 {
                return Err(std::io::Error::last_os_error()).context("timerfd_create");
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let spec = libc::itimerspec {
                it_interval: ts(period_ns),
                it_value: ts(first_ns),
            };
            if libc::timerfd_settime(raw, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) != 0
            {
                return Err(std::io::Error::last_os_error()).context("timerfd_settime");
            }
            fd
        };
        // SAFETY: the timerfd is owned by the AsyncFd and stays open as long as it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("registering the timerfd")?;
        Ok(Self { fd })
    }

    async fn wait(&self) -> anyhow::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|fd| {
                let mut n = 0u64;
                // SAFETY: reads 8 bytes into a u64, as timerfd requires.
                let r = unsafe {
                    libc::read(fd.as_raw_fd(), &mut n as *mut u64 as *mut libc::c_void, 8)
                };
                if r == 8 {
                    Ok(n)
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
            match res {
                Ok(Ok(_expirations)) => return Ok(()),
                Ok(Err(e)) => return Err(e).context("reading the timerfd"),
                Err(_would_block) => continue,
            }
        }
    }
}
