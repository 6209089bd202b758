//! `load`: closed-loop throughput.
//!
//! Every connection keeps `in_flight` messages outstanding: its writer sends one message per
//! credit and its reader returns a credit per echo received, so the target is always busy and
//! never flooded. Writer and reader are separate tasks on the two halves of the socket: a large
//! echo can never deadlock against a large send. Whatever credits are available are written in
//! one syscall when the frames are small.
//!
//! Counted: echoed messages and their payload bytes between the end of the warm-up and the end of
//! the window; MiB/s is echoed payload only (not both directions, not frame headers).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::LocalSet;

use crate::client::{self, Event, FrameReader};
use crate::procfs;
use crate::LoadArgs;

#[derive(Default)]
struct Counters {
    msgs: Cell<u64>,
    bytes: Cell<u64>,
    /// Connections that ended before the window did.
    lost: Cell<u64>,
    first_error: std::cell::RefCell<Option<String>>,
}

/// Frames above this size are written one per syscall; below it a batch is prebuilt.
const BATCH_BYTES: usize = 256 * 1024;

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.in_flight == 0 {
        bail!("--connections and --in-flight must be at least 1");
    }
    let target = client::parse_url(&args.url, args.trust.ca.as_deref())?;
    let rt = crate::runtime()?;
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let mut streams = Vec::with_capacity(args.connections);
        for i in 0..args.connections {
            let s = client::connect(&target, None)
                .await
                .with_context(|| format!("connection {} of {}", i + 1, args.connections))?;
            streams.push(s);
        }
        let tls = streams.first().and_then(|(s, _)| s.tls_info());

        let payload: Vec<u8> = (0..args.size).map(|i| b'a' + (i % 26) as u8).collect();
        let frame = client::client_frame(&payload);
        let per_batch = (BATCH_BYTES / frame.len()).clamp(1, args.in_flight);
        let batch: Rc<Vec<u8>> = Rc::new(frame.repeat(per_batch));
        let frame_len = frame.len();
        let counters = Rc::new(Counters::default());
        let stop = Rc::new(Cell::new(false));
        let mut credits_all = Vec::new();

        for (stream, leftover) in streams {
            let (mut rh, mut wh) = stream.into_split();
            let credits = Arc::new(Semaphore::new(args.in_flight));
            credits_all.push(credits.clone());
            let (c, st, cr) = (counters.clone(), stop.clone(), credits.clone());
            tokio::task::spawn_local(async move {
                let mut reader = FrameReader::new(leftover);
                let end = loop {
                    match reader.next(&mut rh).await {
                        Ok(Event::Message(len)) => {
                            c.msgs.set(c.msgs.get() + 1);
                            c.bytes.set(c.bytes.get() + len);
                            cr.add_permits(1);
                        }
                        Ok(Event::End(end)) => {
                            break format!("server ended the connection ({end:?})")
                        }
                        Err(e) => break format!("{e:#}"),
                    }
                };
                if !st.get() {
                    c.lost.set(c.lost.get() + 1);
                    c.first_error.borrow_mut().get_or_insert(end);
                }
            });
            let (batch, st) = (batch.clone(), stop.clone());
            tokio::task::spawn_local(async move {
                loop {
                    let Ok(permit) = credits.acquire().await else {
                        return;
                    };
                    permit.forget();
                    let mut n = 1 + credits.forget_permits(usize::MAX);
                    if st.get() {
                        return;
                    }
                    while n > 0 {
                        let k = n.min(per_batch);
                        if wh.write_all(&batch[..k * frame_len]).await.is_err() {
                            return;
                        }
                        n -= k;
                    }
                    // Over TLS, a write that met a full socket leaves records in rustls's buffer
                    // until the next write; this task's next write waits for an echo, which may
                    // need those very records. (Plain sockets: a no-op.)
                    if wh.flush().await.is_err() {
                        return;
                    }
                }
            });
        }

        let started = Instant::now();
        tokio::time::sleep(args.window.warmup).await;
        let (m0, b0) = (counters.msgs.get(), counters.bytes.get());
        let cpu = procfs::CpuWatch::start(&args.window.cpu_pids, &args.window.aux_cpu_pids)?;
        let t0 = Instant::now();
        tokio::time::sleep(args.window.duration).await;
        let (m1, b1) = (counters.msgs.get(), counters.bytes.get());
        let window = t0.elapsed().as_secs_f64();
        let cpu = cpu.stop(window)?;
        stop.set(true);
        for c in &credits_all {
            c.close();
        }
        let lost = counters.lost.get();
        // Let the echoes still in flight arrive so the sockets close without unread data.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;

        let msgs = m1 - m0;
        let bytes = b1 - b0;
        let mut out = serde_json::json!({
            "mode": "load",
            "label": args.window.label,
            "url": args.url,
            "connections": args.connections,
            "size": args.size,
            "in_flight": args.in_flight,
            "warmup_s": args.window.warmup.as_secs_f64(),
            "window_s": window,
            "msgs": msgs,
            "msgs_per_s": msgs as f64 / window,
            "mib_per_s": bytes as f64 / window / (1024.0 * 1024.0),
            "connections_lost": lost,
            "elapsed_s": started.elapsed().as_secs_f64(),
        });
        cpu.fill(&mut out);
        if let Some(tls) = tls {
            out["tls"] = serde_json::json!(tls);
        }
        let target_cpu = cpu.target;
        if !args.window.cpu_pids.is_empty() {
            out["target_cpu_us_per_msg"] = if msgs > 0 {
                serde_json::json!(target_cpu * 1e6 / msgs as f64)
            } else {
                serde_json::Value::Null
            };
        }
        if let Some(e) = counters.first_error.borrow().as_ref() {
            out["first_error"] = serde_json::json!(e);
        }
        println!("{out}");
        if msgs == 0 {
            bail!("no message was echoed during the window");
        }
        Ok(())
    })
}
