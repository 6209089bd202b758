//! The running gateway: the current config snapshot behind one `ArcSwap`, the listeners, and the
//! shutdown sequence.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::Error;
use crate::listener::{self, BoundListener};
use crate::router::Router;
use crate::shutdown::Shutdown;
use crate::upstream::RouteUpstreams;

/// One immutable, validated configuration with everything derived from it. A connection holds
/// the `Arc` it took at accept for its whole life.
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    /// Indexed like `config.routes`; `None` for routes without upstreams.
    pub upstreams: Vec<Option<Arc<RouteUpstreams>>>,
}

impl Snapshot {
    /// Fails on what only shows when files are parsed (a CA bundle that is not PEM).
    pub fn new(config: Config) -> Result<Self, Error> {
        let router = Router::new(&config.routes);
        let upstreams = config
            .routes
            .iter()
            .map(|r| {
                if r.upstreams.is_empty() {
                    Ok(None)
                } else {
                    RouteUpstreams::new(r).map(|u| Some(Arc::new(u)))
                }
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self {
            config,
            router,
            upstreams,
        })
    }

    /// Route `index`'s upstreams; only called for routes that have some.
    pub fn upstreams(&self, index: usize) -> Option<&Arc<RouteUpstreams>> {
        self.upstreams.get(index).and_then(Option::as_ref)
    }
}

/// What every task can reach: the current snapshot.
pub struct State {
    current: ArcSwap<Snapshot>,
}

impl State {
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

pub struct Server {
    state: Arc<State>,
    listeners: Vec<BoundListener>,
    shutdown: Shutdown,
}

impl Server {
    /// Binds every listener (TLS files are read here) so that errors come out before anything
    /// is served, and tests can learn the ports of `127.0.0.1:0` listeners.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        let snapshot = Snapshot::new(config)?;
        let config = &snapshot.config;
        let mut listeners = Vec::with_capacity(config.listen.len());
        for l in &config.listen {
            listeners.push(listener::bind(l).await?);
        }
        Ok(Server {
            state: Arc::new(State {
                current: ArcSwap::from_pointee(snapshot),
            }),
            listeners,
            shutdown: Shutdown::new(),
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local_addr).collect()
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until `signal` resolves, then shuts down in layers within `shutdown_grace`:
    /// health says 503, listeners stop, HTTP connections drain, WebSockets get 1001.
    pub async fn run(self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        let Server {
            state,
            listeners,
            shutdown,
        } = self;
        let graceful = Arc::new(GracefulShutdown::new());
        let mut accepting = Vec::with_capacity(listeners.len());
        for bound in listeners {
            info!(address = %bound.local_addr, tls = bound.tls.is_some(), "listening");
            let task =
                listener::accept_loop(bound, state.clone(), shutdown.clone(), graceful.clone());
            accepting.push(tokio::spawn(task));
        }
        signal.await;
        let (grace, drain_delay) = {
            let snapshot = state.current();
            (snapshot.config.shutdown_grace, snapshot.config.drain_delay)
        };
        let deadline = tokio::time::Instant::now() + grace;
        info!(grace = ?grace, drain_delay = ?drain_delay, "shutting down");
        shutdown.begin_draining();
        tokio::time::sleep(drain_delay.min(grace)).await;
        shutdown.stop_accepting();
        for task in accepting {
            let _ = task.await;
        }
        shutdown.close_sockets();
        shutdown.tasks().close();
        let drained = tokio::time::timeout_at(deadline, async {
            // The accept loops have ended, so this is the last handle.
            if let Ok(graceful) = Arc::try_unwrap(graceful) {
                graceful.shutdown().await;
            }
            shutdown.tasks().wait().await;
        })
        .await;
        match drained {
            Ok(()) => info!("all connections closed"),
            Err(_) => warn!(
                open = shutdown.tasks().len(),
                "shutdown_grace reached with connections still open; closing them"
            ),
        }
        Ok(())
    }
}
