//! Passthrough: the raw upgrade goes to the app, which speaks WebSocket itself.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::service::{text, Body, ConnContext};

/// Forwards the upgrade request to one of route `index`'s upstreams and tunnels bytes only after
/// a valid 101.
pub async fn handle(
    _ctx: &Arc<ConnContext>,
    _index: usize,
    _req: Request<Incoming>,
) -> Response<Body> {
    text(
        StatusCode::NOT_IMPLEMENTED,
        "passthrough is not available yet",
    )
}
