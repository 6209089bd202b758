//! The running gateway: the current config snapshot behind one `ArcSwap`, the listeners, reloads
//! and the shutdown sequence.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin;
use crate::config::{Config, ListenerKey, Route, RouteChange};
use crate::error::Error;
use crate::limits::Limiter;
use crate::listener::{self, BoundListener};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::shutdown::Shutdown;
use crate::tls;
use crate::upstream::RouteUpstreams;

/// One immutable, validated configuration with everything derived from it. A connection holds
/// the `Arc` it took at accept for its whole life, so a reload never changes the routes, limits
/// or upstreams under an open connection.
pub struct Snapshot {
    pub config: Config,
    pub router: Router,
    /// Indexed like `config.routes`; `None` for routes without upstreams.
    pub upstreams: Vec<Option<Arc<RouteUpstreams>>>,
    /// Per-listener settings: a reload with new certificate files changes what new handshakes
    /// get, while open connections keep theirs.
    pub listeners: HashMap<ListenerKey, ListenerSettings>,
    /// Indexed like `config.routes`: cancelled when the route's WebSockets must close with 1001
    /// (shutdown cancels them all, being their parent; a draining reload cancels some).
    pub route_closing: Vec<CancellationToken>,
    /// The parent of every `route_closing` token, cancelled at shutdown: tells a shutdown from
    /// a reload's drain.
    pub sockets_closing: CancellationToken,
}

impl Snapshot {
    /// Builds everything a config needs that can still fail: certificates and keys, CA files.
    /// `closing` is the shutdown token the routes' tokens descend from.
    pub fn new(config: Config, closing: &CancellationToken) -> Result<Self, Error> {
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
        let mut listeners = HashMap::new();
        for (l, key) in config.listen.iter().zip(config.listener_keys()) {
            let tls = match &l.tls {
                Some(opts) => Some(TlsAcceptor::from(tls::server_config(opts)?)),
                None => None,
            };
            listeners.insert(
                key,
                ListenerSettings {
                    tls,
                    proxy_protocol: l.proxy_protocol,
                },
            );
        }
        let route_closing = config
            .routes
            .iter()
            .map(|_| closing.child_token())
            .collect();
        Ok(Self {
            config,
            router,
            upstreams,
            listeners,
            route_closing,
            sockets_closing: closing.clone(),
        })
    }

    /// An upstream that a reload leaves on the same route (same path and host) keeps its state:
    /// its open connections, which `least_connections` counts and which still hold leases on the
    /// old snapshot, and its health. A fresh one per snapshot would start healthy and idle, so
    /// any reload, even of `log_level`, put an upstream failing its checks back into rotation.
    /// Health set by a check is only kept while the route is still checked, since nothing else
    /// would ever bring it back.
    fn inherit_upstreams(&mut self, old: &Snapshot) {
        for (index, route) in self.config.routes.iter().enumerate() {
            let Some(before) = old
                .config
                .routes
                .iter()
                .position(|r| r.path == route.path && r.host == route.host)
                .and_then(|at| old.upstreams(at))
            else {
                continue;
            };
            let Some(ups) = self.upstreams.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            let Some(ups) = Arc::get_mut(ups) else {
                continue;
            };
            for target in &mut ups.set.targets {
                if let Some(kept) = before
                    .set
                    .targets
                    .iter()
                    .find(|t| t.upstream == target.upstream)
                {
                    if route.health_check.is_none() {
                        kept.unchecked();
                    }
                    *target = kept.clone();
                }
            }
        }
    }

    /// Route `index`'s upstreams; only called for routes that have some.
    pub fn upstreams(&self, index: usize) -> Option<&Arc<RouteUpstreams>> {
        self.upstreams.get(index).and_then(Option::as_ref)
    }
}

pub struct ListenerSettings {
    pub tls: Option<TlsAcceptor>,
    pub proxy_protocol: bool,
}

/// What every task can reach: the current snapshot and the server's metrics.
pub struct State {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
}

impl State {
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// 1 for the config the server started with, +1 for each reload that was swapped in.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

type ReloadRequest = (Config, oneshot::Sender<Result<u64, Error>>);

/// Hands new configurations to a running server. The file is parsed and validated by the caller
/// (so its error can name file, line and key); the server then builds the snapshot, binds new
/// listeners, and swaps, or rejects the whole reload and keeps serving the old snapshot.
#[derive(Clone)]
pub struct Reloader {
    tx: mpsc::Sender<ReloadRequest>,
    state: Arc<State>,
    shutdown: Shutdown,
    /// A fingerprint of the config file's contents as last loaded, by whichever trigger: the
    /// file watcher skips contents a SIGHUP has already loaded, so `edit; systemctl reload`
    /// is one reload, not two.
    loaded: Arc<std::sync::Mutex<Option<u64>>>,
}

impl Reloader {
    /// Returns the new generation, or why the running config stays.
    pub async fn reload(&self, config: Config) -> Result<u64, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((config, reply))
            .await
            .map_err(|_| Error::Internal("the server is no longer running".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("the server stopped during the reload".into()))?
    }

    /// Notes the contents (by fingerprint) of the file a reload is about to load.
    pub fn loading(&self, fingerprint: Option<u64>) {
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = fingerprint;
    }

    /// The fingerprint of the file contents last loaded.
    pub fn last_loaded(&self) -> Option<u64> {
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether shutdown has begun: from then on the server takes no reload (the snapshot that
    /// serves the drain stays), so triggers are ignored rather than queued unanswered.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_draining()
    }

    /// Records a reload that failed before it reached the server (a file that did not parse).
    pub fn rejected(&self, error: &dyn std::fmt::Display) {
        warn!(error = %error, "reload rejected; the running configuration stays");
        self.state.metrics.reloaded(false, 0);
    }
}

pub struct Server {
    state: Arc<State>,
    listeners: Vec<BoundListener>,
    admin: Option<TcpListener>,
    shutdown: Shutdown,
    reload_tx: mpsc::Sender<ReloadRequest>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
    loaded: Arc<std::sync::Mutex<Option<u64>>>,
}

impl Server {
    /// Binds every listener (TLS files are read here) so that errors come out before anything
    /// is served, and tests can learn the ports of `127.0.0.1:0` listeners.
    pub async fn bind(config: Config) -> Result<Server, Error> {
        let shutdown = Shutdown::new();
        let snapshot = Snapshot::new(config, shutdown.sockets_closing())?;
        let config = &snapshot.config;
        let mut listeners = Vec::with_capacity(config.listen.len());
        for (i, l) in config.listen.iter().enumerate() {
            listeners.push(listener::bind(l, i, &config.source).await?);
        }
        let admin = match &config.admin {
            Some(cfg) => Some(admin::bind(cfg, &config.source).await?),
            None => None,
        };
        let (reload_tx, reload_rx) = mpsc::channel(4);
        Ok(Server {
            state: Arc::new(State {
                current: ArcSwap::from_pointee(snapshot),
                generation: AtomicU64::new(1),
                metrics: Arc::new(Metrics::new()),
                limiter: Arc::new(Limiter::default()),
            }),
            listeners,
            admin,
            shutdown,
            reload_tx,
            reload_rx,
            loaded: Arc::default(),
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local_addr).collect()
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The admin listener's bound address, when one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    pub fn reloader(&self) -> Reloader {
        Reloader {
            tx: self.reload_tx.clone(),
            state: self.state.clone(),
            shutdown: self.shutdown.clone(),
            loaded: self.loaded.clone(),
        }
    }

    /// Serves until `signal` resolves, then shuts down in layers within `shutdown_grace`:
    /// health says 503, listeners keep accepting for `drain_delay`, then stop; HTTP connections
    /// drain, WebSockets get 1001 (spread over `close_spread`).
    pub async fn run(self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        let Server {
            state,
            listeners,
            admin,
            shutdown,
            reload_tx,
            mut reload_rx,
            loaded: _,
        } = self;
        drop(reload_tx);
        let graceful = Arc::new(GracefulShutdown::new());
        let mut running = Running {
            state: state.clone(),
            shutdown: shutdown.clone(),
            graceful: graceful.clone(),
            accepting: HashMap::new(),
            health: shutdown.accepting_stopped().child_token(),
            admin: None,
            retired: Vec::new(),
            started: std::time::Instant::now(),
        };
        let snapshot = state.current();
        if let (Some(configured), Some(listener)) = (snapshot.config.admin, admin) {
            running.start_admin(configured.address, listener);
        }
        for (bound, key) in listeners.into_iter().zip(snapshot.config.listener_keys()) {
            running.start_listener(key, bound);
        }
        crate::upstream::health::spawn_health_checks(
            &snapshot,
            running.health.clone(),
            shutdown.tasks(),
        );
        drop(snapshot);

        tokio::pin!(signal);
        loop {
            tokio::select! {
                _ = &mut signal => break,
                Some((config, reply)) = reload_rx.recv() => {
                    let result = running.reload(config).await;
                    match &result {
                        Ok(generation) => {
                            info!(generation, "configuration reloaded");
                            state.metrics.reloaded(true, *generation);
                        }
                        Err(e) => {
                            warn!(error = %e, "reload rejected; the running configuration stays");
                            state.metrics.reloaded(false, 0);
                        }
                    }
                    let _ = reply.send(result);
                }
            }
        }

        let (grace, drain_delay) = {
            let snapshot = state.current();
            (snapshot.config.shutdown_grace, snapshot.config.drain_delay)
        };
        let deadline = tokio::time::Instant::now() + grace;
        info!(grace = ?grace, drain_delay = ?drain_delay, "shutting down");
        shutdown.begin_draining();
        // A reload queued as shutdown began gets its answer (an error) now, not at exit.
        drop(reload_rx);
        tokio::time::sleep(drain_delay.min(grace)).await;
        shutdown.stop_accepting();
        for (_, (_, task)) in running.accepting.drain() {
            let _ = task.await;
        }
        drop(running);
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

/// The parts of a running server a reload changes.
struct Running {
    state: Arc<State>,
    shutdown: Shutdown,
    graceful: Arc<GracefulShutdown>,
    /// Accept loops by configured address, each with its own stop token.
    accepting: HashMap<ListenerKey, (CancellationToken, JoinHandle<()>)>,
    /// Stops the current snapshot's health checkers.
    health: CancellationToken,
    /// The admin listener's configured address, and the token that stops its accept loop.
    admin: Option<(SocketAddr, CancellationToken, JoinHandle<()>)>,
    /// When the process started serving, for the admin side's uptime.
    started: std::time::Instant,
    /// Snapshots a reload replaced, for as long as a connection holds one (see `reload`).
    retired: Vec<std::sync::Weak<Snapshot>>,
}

impl Running {
    fn start_listener(&mut self, configured: ListenerKey, bound: BoundListener) {
        let tls = self
            .state
            .current()
            .listeners
            .get(&configured)
            .is_some_and(|l| l.tls.is_some());
        info!(address = %bound.local_addr, tls, "listening");
        let stop = self.shutdown.accepting_stopped().child_token();
        let task = listener::accept_loop(
            bound,
            configured,
            self.state.clone(),
            self.shutdown.clone(),
            self.graceful.clone(),
            stop.clone(),
        );
        self.accepting
            .insert(configured, (stop, tokio::spawn(task)));
    }

    fn start_admin(&mut self, configured: SocketAddr, listener: TcpListener) {
        let stop = CancellationToken::new();
        let task = admin::serve(
            listener,
            self.state.clone(),
            self.shutdown.clone(),
            self.started,
            stop.clone(),
        );
        self.admin = Some((configured, stop, tokio::spawn(task)));
    }

    /// Validates and swaps in `config`. Nothing changes unless every step that can fail
    /// (certificates, CA files, binding new addresses) has succeeded.
    async fn reload(&mut self, config: Config) -> Result<u64, Error> {
        // Certificates, keys and CA files (the system's roots among them) are read on the
        // blocking pool: a slow or hung filesystem must not stall the connections that share this
        // worker while the old snapshot keeps serving them.
        let closing = self.shutdown.sockets_closing().clone();
        let mut snapshot = tokio::task::spawn_blocking(move || Snapshot::new(config, &closing))
            .await
            .map_err(|e| Error::Internal(format!("building the new snapshot failed: {e}")))??;
        snapshot.inherit_upstreams(&self.state.current());
        let snapshot = Arc::new(snapshot);
        let mut added = Vec::new();
        let keys = snapshot.config.listener_keys();
        for (i, (l, key)) in snapshot.config.listen.iter().zip(&keys).enumerate() {
            if !self.accepting.contains_key(key) {
                added.push((*key, listener::bind(l, i, &snapshot.config.source).await?));
            }
        }
        // A moved admin listener is bound before anything changes, like a new public one.
        let admin_moved =
            snapshot.config.admin.map(|a| a.address) != self.admin.as_ref().map(|a| a.0);
        let new_admin = match &snapshot.config.admin {
            Some(cfg) if admin_moved => Some((
                cfg.address,
                admin::bind(cfg, &snapshot.config.source).await?,
            )),
            _ => None,
        };
        let old = self.state.current.swap(snapshot.clone());
        let generation = self.state.generation.fetch_add(1, Ordering::Relaxed) + 1;

        for (configured, bound) in added {
            self.start_listener(configured, bound);
        }
        // A reload is done when removed listeners are really closed, not merely told to stop.
        let removed: Vec<ListenerKey> = self
            .accepting
            .keys()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect();
        for key in removed {
            if let Some((stop, task)) = self.accepting.remove(&key) {
                stop.cancel();
                let _ = task.await;
                info!(address = %key.address, "listener removed");
            }
        }

        if admin_moved {
            if let Some((_, stop, task)) = self.admin.take() {
                stop.cancel();
                let _ = task.await;
            }
            if let Some((configured, listener)) = new_admin {
                self.start_admin(configured, listener);
            }
        }

        self.health.cancel();
        self.health = self.shutdown.accepting_stopped().child_token();
        crate::upstream::health::spawn_health_checks(
            &snapshot,
            self.health.clone(),
            self.shutdown.tasks(),
        );

        // Every snapshot a connection still holds, not only the one just replaced: a session
        // whose route a `keep` reload removed long ago is drained by the first `drain` reload
        // that does not serve it.
        self.retired.retain(|s| s.strong_count() > 0);
        self.retired.push(Arc::downgrade(&old));
        drop(old);
        if snapshot.config.on_route_change == RouteChange::Drain {
            for held in self.retired.iter().filter_map(std::sync::Weak::upgrade) {
                for (index, route) in held.config.routes.iter().enumerate() {
                    let token = &held.route_closing[index];
                    if !token.is_cancelled() && !still_served(route, &snapshot.config.routes) {
                        info!(route = %route.name(), "route removed or changed; draining its WebSockets");
                        token.cancel();
                    }
                }
            }
        }
        Ok(generation)
    }
}

/// Whether a route of the old config is in the new one unchanged (its line may have moved).
fn still_served(route: &Route, routes: &[Route]) -> bool {
    routes.iter().any(|r| {
        Route {
            line: route.line,
            ..r.clone()
        } == *route
    })
}
