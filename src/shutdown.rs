//! The shutdown handle every task shares. Shutdown has layers under one deadline: health flips to
//! 503, listeners stop accepting, hyper drains HTTP connections, and upgraded WebSockets, which
//! hyper no longer tracks, are told through the token to close with 1001.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    draining: AtomicBool,
    /// Cancelled when listeners must stop accepting.
    stop_accepting: CancellationToken,
    /// Cancelled when open WebSockets must close with 1001.
    close_sockets: CancellationToken,
    /// Every task that serves a connection or a WebSocket, so the last layer can wait for them.
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Health answers 503 from now on; connections keep being served.
    pub fn begin_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    pub fn stop_accepting(&self) {
        self.inner.stop_accepting.cancel();
    }

    pub fn accepting_stopped(&self) -> &CancellationToken {
        &self.inner.stop_accepting
    }

    pub fn close_sockets(&self) {
        self.inner.close_sockets.cancel();
    }

    /// What an open WebSocket watches to learn it must close with 1001.
    pub fn sockets_closing(&self) -> &CancellationToken {
        &self.inner.close_sockets
    }

    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }
}
