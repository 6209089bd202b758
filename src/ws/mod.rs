//! WebSocket handling shared by every mode: the opening handshake, the origin policy, frame
//! validation around fastwebsockets, keep-alive, the echo endpoint, bursts of small frames
//! taken where they were read, and the streaming of large binary frames through the relay.

pub mod burst;
pub mod close;
pub mod echo;
pub mod frames;
pub mod handshake;
pub mod io;
pub mod keepalive;
pub mod origin;
pub mod relay;
pub mod session;
pub mod stream;
