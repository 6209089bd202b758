//! wsgate, a WebSocket gateway.
//!
//! Map of the crate:
//! - [`admin`]: the admin listener: /metrics, /status and a live status page.
//! - [`config`]: the YAML file, parsed and validated into one immutable snapshot.
//! - [`server`]: the running gateway: the snapshot behind an `ArcSwap`, listeners, shutdown order.
//! - [`limits`]: admission limits (sessions in all, per client address, rates).
//! - [`buffer`]: I/O buffers lent per read from a per-thread pool, so idle connections hold none.
//! - [`listener`]: accepting TCP and TLS connections and handing them to hyper, with timeouts.
//! - [`tls`]: rustls server configuration and certificate choice by SNI.
//! - [`service`]: per-request dispatch: health, sample page, route, WebSocket mode.
//! - [`proxy_protocol`]: PROXY v1/v2 headers from L4 load balancers (the real client address).
//! - [`reload`]: SIGHUP and config-file watching that feed the server new snapshots.
//! - [`router`]: host and path-prefix route matching.
//! - [`ws`]: WebSocket handshake, origin policy, frame validation around fastwebsockets,
//!   keep-alive, the echo endpoint, the relay, bursts of small frames taken where they were
//!   read (`ws::burst`), and the streaming of large binary frames through the relay
//!   (`ws::stream`).
//! - [`stall`]: write halves that give up on a peer that has taken no bytes for too long.
//! - [`shutdown`]: the shared shutdown handle (draining flag, tokens, task tracker).
//! - [`error`]: errors by source (client, upstream, config, internal) and their status/close codes.
//! - [`proxy`]: HTTP reverse proxy and raw WebSocket passthrough to upstream apps.
//! - [`upgraded`]: an upgraded connection taken back from hyper: a plain socket read and written
//!   directly, split without a lock.
//! - [`upstream`]: balancing, health and connecting to the apps behind the gateway.
//! - [`metrics`]: Prometheus counters, gauges and histograms per server.
//! - [`notify`]: systemd readiness notifications (READY, RELOADING, STOPPING).
//! - [`page`]: the embedded sample page.
//! - [`wake`]: futures and reads polled only after their own wake-up (a session's shutdown
//!   token, a relay's control queue, the socket of a relay or tunnel that did not wake it).

#![forbid(unsafe_code)]

pub mod admin;
pub mod buffer;
pub mod config;
pub mod error;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod router;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod stall;
pub mod tls;
pub mod upgraded;
pub mod upstream;
pub mod wake;
pub mod ws;

pub use error::Error;
pub use server::Server;
