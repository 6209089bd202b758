//! systemd's readiness protocol (`Type=notify`): the unit is "started" only once listeners are
//! bound, a reload is visible as RELOADING until the new config serves, and STOPPING tells
//! systemd the drain has begun. A plain datagram to `$NOTIFY_SOCKET`, so no crate is needed;
//! without that variable (not under systemd) every call does nothing.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to the service manager, if there is one. Failures are
/// returned for logging; they never stop the gateway.
pub fn notify(state: &str) -> io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path.to_string_lossy(), state),
        None => Ok(()),
    }
}

/// `RELOADING=1` must carry CLOCK_MONOTONIC in microseconds: systemd 253+ (`Type=notify-reload`)
/// matches it against its own clock.
pub fn reloading_message() -> String {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let micros = now.tv_sec as u128 * 1_000_000 + now.tv_nsec as u128 / 1_000;
    format!("RELOADING=1\nMONOTONIC_USEC={micros}")
}

pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let addr = if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else {
        SocketAddr::from_pathname(socket)?
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_the_state_to_the_socket() {
        let path = std::env::temp_dir().join(format!("wsgate-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&path);
        assert!(reloading_message().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    }
}
