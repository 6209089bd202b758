//! Forwarding to the apps behind the gateway: ordinary HTTP requests (reverse proxy) and raw
//! WebSocket upgrades that wsgate does not process (passthrough).

pub mod http;
pub mod passthrough;
