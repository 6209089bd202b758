//! `wsgate-bench`: the programs behind tests/bench/run.sh.
//!
//! - `backend`: a bare fastwebsockets echo server, the "direct" target and the upstream behind
//!   every proxy.
//! - `load`: closed-loop throughput (N connections, K messages in flight on each).
//! - `latency`: open-loop at a fixed rate, latency measured from each message's intended send time.
//! - `idle`: N idle WebSockets and the target's VmRSS before and after.
//! - `cpu`: a process's CPU time over a window (the same figure `load --cpu-pid` reports).
//! - `certs`: a CA and a server certificate for the wss:// targets.
//! - `probe`, `freeport`: helpers for the script.
//!
//! Every client refuses targets that are not loopback addresses: this is a benchmark of programs
//! on this machine only.

mod backend;
mod client;
mod idle;
mod latency;
mod load;
mod procfs;
mod tls;
mod units;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wsgate-bench",
    about = "Benchmark harness for wsgate (see tests/bench/README.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bare fastwebsockets echo server; prints its bound address on stdout's first line.
    Backend {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Serve wss:// with this certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Closed-loop throughput: one JSON line with msgs/s and MiB/s of echoed payload.
    Load(LoadArgs),
    /// Open-loop latency at a fixed rate, from the intended send time: one JSON line.
    Latency(LatencyArgs),
    /// Open N idle WebSockets and report the target's VmRSS growth per connection.
    Idle(IdleArgs),
    /// CPU time (utime+stime) of processes over a window, as one JSON line.
    Cpu {
        /// Process to watch; repeat for several (summed).
        #[arg(long = "pid", required = true)]
        pids: Vec<u32>,
        #[arg(long, value_parser = units::parse_duration, default_value = "5s")]
        duration: Duration,
    },
    /// Handshake and echo one message; exit 0 if the target works, 1 (with the reason) if not.
    Probe {
        #[arg(long)]
        url: String,
        #[command(flatten)]
        trust: Trust,
        #[arg(long, value_parser = units::parse_size, default_value = "16")]
        size: usize,
        #[arg(long, value_parser = units::parse_duration, default_value = "5s")]
        timeout: Duration,
    },
    /// Print a TCP port that is free on 127.0.0.1 right now (for programs that cannot bind :0).
    Freeport,
    /// Write ca.crt, server.crt, server.key and server.pem (certificate + key) for the wss://
    /// targets: a CA made now and a P-256 certificate for localhost and 127.0.0.1 signed by it.
    Certs {
        #[arg(long)]
        out: PathBuf,
    },
}

/// What a wss:// URL's certificate is checked against.
#[derive(Args, Clone)]
pub struct Trust {
    /// CA certificate (PEM) for wss:// URLs, e.g. the ca.crt `certs` writes.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct LoadArgs {
    /// ws://127.0.0.1:PORT/PATH or wss://127.0.0.1:PORT/PATH
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub trust: Trust,
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Payload bytes per message (20, 1KiB, 16KiB, 1MiB, ...).
    #[arg(long, value_parser = units::parse_size, default_value = "1KiB")]
    pub size: usize,
    /// Messages outstanding per connection (closed loop: a new one is sent per echo received).
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    #[command(flatten)]
    pub window: Window,
}

/// The measured window and what is reported with it, shared by `load` and `latency`.
#[derive(Args, Clone)]
pub struct Window {
    #[arg(long, value_parser = units::parse_duration, default_value = "5s")]
    pub duration: Duration,
    #[arg(long, value_parser = units::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Also report these processes' CPU time over the measured window (repeat to sum).
    #[arg(long = "cpu-pid")]
    pub cpu_pids: Vec<u32>,
    /// Processes reported apart as `aux_cpu_util` (the echo backend behind a proxy, which shares
    /// the load generator's CPU: together they show whether that CPU was the bottleneck).
    #[arg(long = "aux-cpu-pid")]
    pub aux_cpu_pids: Vec<u32>,
    /// Free-form label copied into the JSON output.
    #[arg(long, default_value = "")]
    pub label: String,
}

#[derive(Args, Clone)]
pub struct LatencyArgs {
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub trust: Trust,
    /// Messages per second, over all connections together.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Payload bytes per message; at least 16 (the send timestamp and sequence number).
    #[arg(long, value_parser = units::parse_size, default_value = "1KiB")]
    pub size: usize,
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// How long before a message is due the sender wakes and then polls (yielding to the
    /// readers and the I/O driver) until it is: a sleeping sender's own wake-up (tens of µs on
    /// a VM, and as much again of spread) would otherwise be part of every figure. 0: sleep
    /// until due.
    #[arg(long, value_parser = units::parse_duration, default_value = "1ms")]
    pub spin: Duration,
    #[command(flatten)]
    pub window: Window,
}

#[derive(Args, Clone)]
pub struct IdleArgs {
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub trust: Trust,
    #[arg(long, default_value_t = 5000)]
    pub connections: usize,
    /// Process whose VmRSS is measured; repeat to sum several (nginx master + worker).
    #[arg(long = "pid", required = true)]
    pub pids: Vec<u32>,
    /// Source addresses to spread connections over (comma-separated, loopback only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8"
    )]
    pub sources: Vec<std::net::Ipv4Addr>,
    /// Wait this long after the last connection opened before reading VmRSS again.
    #[arg(long, value_parser = units::parse_duration, default_value = "2s")]
    pub settle: Duration,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value = "")]
    pub label: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let nofile = procfs::raise_nofile_limit();
    let result = match cli.command {
        Command::Backend {
            listen,
            tls_cert,
            tls_key,
        } => backend::run(listen, tls_cert.zip(tls_key)),
        Command::Load(args) => load::run(args),
        Command::Latency(args) => latency::run(args),
        Command::Idle(args) => idle::run(args, nofile),
        Command::Cpu { pids, duration } => cpu(pids, duration),
        Command::Probe {
            url,
            trust,
            size,
            timeout,
        } => client::probe(&url, trust.ca.as_deref(), size, timeout),
        Command::Freeport => freeport(),
        Command::Certs { out } => tls::write_certs(&out),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn cpu(pids: Vec<u32>, duration: Duration) -> anyhow::Result<()> {
    let before = procfs::cpu_seconds(&pids)?;
    std::thread::sleep(duration);
    let after = procfs::cpu_seconds(&pids)?;
    let used = after - before;
    println!(
        "{}",
        serde_json::json!({
            "mode": "cpu",
            "pids": pids,
            "window_s": duration.as_secs_f64(),
            "cpu_s": used,
            "cpu_util": used / duration.as_secs_f64(),
        })
    );
    Ok(())
}

fn freeport() -> anyhow::Result<()> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    println!("{}", l.local_addr()?.port());
    Ok(())
}

/// The single-threaded runtime every client runs on: the load generator must be one thread so
/// it can be pinned to one CPU and its cost compared with the target's.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
}
