//! `idle`: memory per idle WebSocket.
//!
//! Reads the target's VmRSS, opens N WebSockets (handshake completed, then silent), waits for
//! the target to settle, reads VmRSS again: (after - before) / N is what one idle connection
//! costs, everything it holds included (for relay and passthrough, the upstream side too).
//! Connections are spread over several 127.0.0.x source addresses so no one source runs out of
//! ephemeral ports.

use std::time::Instant;

use anyhow::{bail, Context};
use tokio::task::{JoinSet, LocalSet};

use crate::client;
use crate::procfs;
use crate::IdleArgs;

pub fn run(args: IdleArgs, nofile: u64) -> anyhow::Result<()> {
    if args.sources.is_empty() {
        bail!("--sources needs at least one address");
    }
    if (args.connections as u64) + 64 > nofile {
        bail!(
            "{} connections need more open files than RLIMIT_NOFILE allows ({nofile})",
            args.connections
        );
    }
    let target = client::parse_url(&args.url, args.trust.ca.as_deref())?;
    let rt = crate::runtime()?;
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let before = procfs::vm_rss_kib(&args.pids)?;
        let started = Instant::now();
        let mut open = Vec::with_capacity(args.connections);
        let mut failed = 0usize;
        let mut first_error = None;
        let mut set = JoinSet::new();
        let mut next = 0usize;
        while next < args.connections || !set.is_empty() {
            while next < args.connections && set.len() < args.concurrency.max(1) {
                let (t, src) = (target.clone(), args.sources[next % args.sources.len()]);
                set.spawn_local(async move { client::connect(&t, Some(src)).await });
                next += 1;
            }
            match set.join_next().await {
                Some(Ok(Ok((stream, _)))) => open.push(stream),
                Some(Ok(Err(e))) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                Some(Err(e)) => return Err(e).context("connect task"),
                None => {}
            }
        }
        let open_s = started.elapsed().as_secs_f64();
        tokio::time::sleep(args.settle).await;
        let after = procfs::vm_rss_kib(&args.pids)?;
        let n = open.len();
        let per_conn = if n > 0 {
            (after as f64 - before as f64) / n as f64
        } else {
            0.0
        };
        let mut out = serde_json::json!({
            "mode": "idle",
            "label": args.label,
            "url": args.url,
            "pids": args.pids,
            "requested": args.connections,
            "opened": n,
            "failed": failed,
            "sources": args.sources.len(),
            "open_s": open_s,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_conn": per_conn,
        });
        if let Some(e) = first_error {
            out["first_error"] = serde_json::json!(e);
        }
        println!("{out}");
        drop(open);
        if n == 0 {
            bail!("no connection could be opened");
        }
        Ok(())
    })
}
