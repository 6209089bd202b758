//! The `wsgate` command: run the gateway, or check a config file and exit (like `nginx -t`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use wsgate::config::{self, Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "A WebSocket gateway: echo, relay and passthrough in front of web apps"
)]
struct Cli {
    /// Configuration file (YAML). Without it, the embedded default: http://127.0.0.1:5000,
    /// sample page at /, echo at /ws.
    #[arg(long, short, global = true, env = "WSGATE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and exit 0 if it is good, 1 if not.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            return ExitCode::from(1);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!(
                "wsgate: configuration {} is valid ({} listeners, {} routes)",
                config.source,
                config.listen.len(),
                config.routes.len()
            );
            ExitCode::SUCCESS
        }
        Command::Run => match run(config, cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wsgate: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    // The loader parses certificates, keys and CA files too, so `check` refuses what `run` would.
    Ok(match path {
        Some(p) => config::load_file(p)?,
        None => config::load_str(
            config::EMBEDDED_DEFAULT,
            "<embedded default>",
            std::path::Path::new("."),
        )?,
    })
}

/// Logs to stderr through `RUST_LOG`'s filter when it is set and valid, else `log_level`'s (which
/// config validation has already checked). A `RUST_LOG` that does not parse is reported once
/// logging is up, not silently replaced.
///
/// A filter of levels and targets only (`info`, `wsgate=debug,hyper=warn`) is installed as a
/// [`Targets`] filter, which keeps no state per span. [`EnvFilter`] takes a read lock on its
/// table of spans at every span enter and exit, and each session's task enters its span at
/// every wake-up: a lock taken for every burst of messages, for span and field directives
/// (`[ws{mode=relay}]=debug`) that only such filters use, and still get. Measured with
/// callgrind on a relayed 20 B echo: entering and leaving the span fell from 59 to 45
/// instructions per message.
fn init_logging(config: &Config) {
    let mut rejected = None;
    let directives = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => match EnvFilter::builder().parse(&env) {
            Ok(_) => env,
            Err(e) => {
                rejected = Some((env, e));
                config.log.level.clone()
            }
        },
        _ => config.log.level.clone(),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // `Targets` would take a span directive (`[ws]=debug`) for an odd target name. Exactly one
    // of each pair below is set; a `None` layer does nothing, and costs a branch.
    let targets = match directives.contains(['[', ']', '{', '}']) {
        true => None,
        false => directives.parse::<Targets>().ok(),
    };
    let env_filter = targets
        .is_none()
        .then(|| EnvFilter::builder().parse_lossy(&directives));
    let json = (config.log.format == LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    });
    let text = (config.log.format == LogFormat::Text)
        .then(|| fmt::layer().with_writer(std::io::stderr).with_ansi(ansi));
    tracing_subscriber::registry()
        .with(targets)
        .with(env_filter)
        .with(json)
        .with(text)
        .init();
    if let Some((env, error)) = rejected {
        tracing::warn!(
            rust_log = %env,
            %error,
            log_level = %config.log.level,
            "RUST_LOG is not a valid log filter; log_level is used instead"
        );
    }
}

fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    runtime()
        .context("starting the runtime")?
        .block_on(serve(config, path))
}

/// On one CPU (a process pinned to it, or a container limited to it), tokio's single-threaded
/// scheduler: a work-stealing one has nobody to steal from there and only adds cross-thread
/// synchronisation to every wake-up. Measured pinned to one CPU: user CPU per message 18% lower
/// on a 1 KiB passthrough echo and 8% lower relayed. With more CPUs, one worker per CPU
/// (`TOKIO_WORKER_THREADS` sets another number, and then always the work-stealing scheduler).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

async fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    init_logging(&config);
    let server = wsgate::Server::bind(config).await.context("starting")?;
    let reloader = server.reloader();
    let hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::spawn(wsgate::reload::on_sighup(
        hup,
        path.clone(),
        reloader.clone(),
    ));
    if let Some(path) = path {
        tokio::spawn(wsgate::reload::watch_file(path, reloader));
    }
    notify("READY=1");
    server
        .run(async {
            shutdown_signal(term, int).await;
            notify("STOPPING=1");
        })
        .await?;
    Ok(())
}

fn notify(state: &str) {
    if let Err(e) = wsgate::notify::notify(state) {
        tracing::warn!(error = %e, state, "could not notify the service manager");
    }
}

/// SIGTERM (service managers, Kubernetes) or SIGINT (Ctrl-C) starts the graceful shutdown.
async fn shutdown_signal(mut term: Signal, mut int: Signal) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
