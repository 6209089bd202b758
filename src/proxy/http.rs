//! HTTP reverse proxy: every request on a route that is not a WebSocket upgrade.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::config::Route;
use crate::error::Error;
use crate::service::{text, Body, ConnContext};

/// The pooled client a route uses for its upstreams.
pub struct HttpClient {}

impl HttpClient {
    pub fn new(_route: &Route) -> Result<Self, Error> {
        Ok(Self {})
    }
}

/// Forwards `req` to one of route `index`'s upstreams.
pub async fn forward(
    _ctx: &Arc<ConnContext>,
    _index: usize,
    _req: Request<Incoming>,
) -> Response<Body> {
    text(
        StatusCode::NOT_IMPLEMENTED,
        "HTTP proxying is not available yet",
    )
}
