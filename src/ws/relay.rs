//! Relay: wsgate terminates the client's WebSocket and opens its own to an upstream.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::handshake::Handshake;
use crate::service::{text, Body, ConnContext};

/// Opens the upstream WebSocket first; answers 101 only once it is open, else 502.
pub async fn handle(
    _ctx: &Arc<ConnContext>,
    _index: usize,
    _req: Request<Incoming>,
    _hs: Handshake,
) -> Response<Body> {
    text(StatusCode::NOT_IMPLEMENTED, "relay is not available yet")
}
