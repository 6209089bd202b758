//! Reloads without dropping anything: open WebSockets keep their snapshot, new connections see
//! the new routes, bad files are rejected whole, drained routes close with 1001, and a new
//! certificate is used by new handshakes only.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tungstenite::Message;

fn yaml(extra_routes: &str, top: &str) -> String {
    format!(
        "listen:\n{}{top}websockets:\n  close_timeout: 300ms\nroutes:\n  - path: /ws\n    websocket: echo\n{extra_routes}",
        plain_listener()
    )
}

async fn status(gw: &Gateway, path: &str) -> u16 {
    upgrade_status(gw.addr(), path, "localhost").await.0
}

#[tokio::test]
async fn reload_under_load_drops_and_reorders_nothing() {
    let dir = TempDir::new("reload-load");
    let file = dir.path().join("wsgate.yaml");
    std::fs::write(&file, yaml("", "")).unwrap();
    let gw = Gateway::start(&yaml("", "")).await;
    // The listener keeps its port across reloads because its configured address is unchanged.
    let url = gw.ws_url("/ws");

    const CLIENTS: usize = 100;
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let ws = connect(&url).await;
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let mut n: u64 = 0;
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    sent = tx.send(Message::text(n.to_string())) => sent.expect("send"),
                }
                match tokio::time::timeout(WAIT, rx.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        assert_eq!(t.as_str(), n.to_string(), "lost or reordered")
                    }
                    other => panic!("connection dropped or bad echo: {other:?}"),
                }
                n += 1;
            }
            tx.send(Message::Close(None)).await.unwrap();
            n
        }));
    }

    let mut expected_generation = 1;
    for i in 0..20 {
        if i % 2 == 0 {
            // Valid: adds a route that must answer at once.
            let extra = format!("  - path: /r{i}\n    websocket: echo\n");
            std::fs::write(&file, yaml(&extra, "")).unwrap();
            wsgate::reload::reload_from(&file, &gw.reloader).await;
            expected_generation += 1;
            assert_eq!(gw.state.generation(), expected_generation);
            assert_eq!(status(&gw, &format!("/r{i}")).await, 101);
        } else {
            // Invalid: a typo; the previous config keeps serving.
            std::fs::write(&file, "listen:\n  - address: 127.0.0.1:0\nroutez: []\n").unwrap();
            wsgate::reload::reload_from(&file, &gw.reloader).await;
            assert_eq!(gw.state.generation(), expected_generation);
            assert_eq!(status(&gw, &format!("/r{}", i - 1)).await, 101);
        }
    }
    // A route from an older generation is gone for new connections.
    assert_eq!(status(&gw, "/r0").await, 404);
    stop.notify_waiters();
    let mut total = 0;
    for c in clients {
        total += c.await.expect("client task");
    }
    assert!(
        total >= CLIENTS as u64,
        "clients exchanged {total} messages"
    );
    gw.stop().await;
}

#[tokio::test]
async fn drained_route_closes_with_1001_and_kept_route_stays() {
    let top = "on_route_change: drain\n";
    let extra = "  - path: /old\n    websocket: echo\n";
    let gw = Gateway::start(&yaml(extra, top)).await;
    let mut old = connect(&gw.ws_url("/old")).await;
    let mut kept = connect(&gw.ws_url("/ws")).await;
    let config =
        wsgate::config::load_str(&yaml("", top), "t.yaml", std::path::Path::new(".")).unwrap();
    assert_eq!(gw.reloader.reload(config).await.unwrap(), 2);
    // Said apart from a shutdown: the server is not going away.
    assert_eq!(
        expect_close_frame(&mut old).await,
        (1001, "route changed by a reload".to_string())
    );
    kept.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        next_msg(&mut kept).await.unwrap().unwrap(),
        Message::text("still here")
    );

    // With the default (keep), a removed route's open sockets carry on.
    let gw2 = Gateway::start(&yaml(extra, "")).await;
    let mut old = connect(&gw2.ws_url("/old")).await;
    let config =
        wsgate::config::load_str(&yaml("", ""), "t.yaml", std::path::Path::new(".")).unwrap();
    gw2.reloader.reload(config).await.unwrap();
    old.send(Message::text("kept")).await.unwrap();
    assert_eq!(
        next_msg(&mut old).await.unwrap().unwrap(),
        Message::text("kept")
    );
    assert_eq!(status(&gw2, "/old").await, 404);
    gw.stop().await;
    gw2.stop().await;
}

/// A WebSocket accepted two reloads ago is drained too: its route's token survives the reload
/// that left the route alone.
#[tokio::test]
async fn a_drain_reaches_sockets_accepted_before_earlier_reloads() {
    let top = "on_route_change: drain\n";
    let other = "  - path: /other\n    websocket: echo\n";
    let gw = Gateway::start(&yaml(other, top)).await;
    let mut first = connect(&gw.ws_url("/ws")).await;
    let load = |text: String| {
        wsgate::config::load_str(&text, "t.yaml", std::path::Path::new(".")).unwrap()
    };
    // Generation 2 drops /other and keeps /ws as it was.
    gw.reloader.reload(load(yaml("", top))).await.unwrap();
    let mut second = connect(&gw.ws_url("/ws")).await;
    // Generation 3 changes /ws (a new close_timeout): both sockets on it are drained.
    let changed = yaml("", top).replace("close_timeout: 300ms", "close_timeout: 400ms");
    gw.reloader.reload(load(changed)).await.unwrap();
    assert_eq!(expect_close(&mut second).await, 1001);
    assert_eq!(expect_close(&mut first).await, 1001);
    gw.stop().await;
}

/// A session whose route a `keep` reload removed is drained by a later `drain` reload that
/// does not serve that route, even after the route came back in between.
#[tokio::test]
async fn a_drain_reaches_sockets_a_keep_reload_left_behind() {
    let drain = "on_route_change: drain\n";
    let gw = Gateway::start(&yaml("", "")).await;
    let mut first = connect(&gw.ws_url("/ws")).await;
    let load = |text: String| {
        wsgate::config::load_str(&text, "t.yaml", std::path::Path::new(".")).unwrap()
    };
    let without_ws = |top: &str| yaml("", top).replace("  - path: /ws\n", "  - path: /other\n");
    // Removed under keep: the session carries on.
    gw.reloader.reload(load(without_ws(""))).await.unwrap();
    // Back, under drain; a second session opens.
    gw.reloader.reload(load(yaml("", drain))).await.unwrap();
    let mut second = connect(&gw.ws_url("/ws")).await;
    first.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        next_msg(&mut first).await.unwrap().unwrap(),
        Message::text("still here")
    );
    // Removed under drain: both go.
    gw.reloader.reload(load(without_ws(drain))).await.unwrap();
    assert_eq!(expect_close(&mut second).await, 1001);
    assert_eq!(expect_close(&mut first).await, 1001);
    gw.stop().await;
}

#[tokio::test]
async fn a_new_certificate_is_used_by_new_handshakes() {
    let pki = TestPki::new();
    let (a_crt, a_key) = pki.issue("first", &["localhost"]);
    let (b_crt, b_key) = pki.issue("second", &["localhost"]);
    let tls_yaml = |crt: &std::path::Path, key: &std::path::Path| {
        format!(
            "listen:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\nroutes:\n  - path: /ws\n    websocket: echo\n",
            crt.display(),
            key.display()
        )
    };
    let gw = Gateway::start(&tls_yaml(&a_crt, &a_key)).await;
    let leaf = |addr| {
        let client = pki.client_config();
        async move {
            let connector = tokio_rustls::TlsConnector::from(client);
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let s = connector.connect(name, tcp).await.unwrap();
            let cert = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            (s, cert)
        }
    };
    let (open, first) = leaf(gw.addr()).await;
    let config = wsgate::config::load_str(
        &tls_yaml(&b_crt, &b_key),
        "t.yaml",
        std::path::Path::new("."),
    )
    .unwrap();
    gw.reloader.reload(config).await.unwrap();
    let (_s, second) = leaf(gw.addr()).await;
    assert_ne!(
        first, second,
        "the new handshake still got the old certificate"
    );
    // The connection made before the reload keeps working on its own session.
    let mut open = open;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    open.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    open.read_to_end(&mut body).await.unwrap();
    assert!(String::from_utf8_lossy(&body).starts_with("HTTP/1.1 200"));

    // A key file that does not fit its certificate is refused by the loader, at its key.
    let bad = tls_yaml(&a_crt, &b_key);
    let e = wsgate::config::load_str(&bad, "t.yaml", std::path::Path::new(".")).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_str()),
        (5, "listen[0].tls.certificates[0].key"),
        "{e}"
    );
    assert!(e.message.contains("does not fit"), "{e}");
    // And should one reach the server anyway, the reload is rejected whole.
    let mut config = wsgate::config::load_str(
        &tls_yaml(&a_crt, &a_key),
        "t.yaml",
        std::path::Path::new("."),
    )
    .unwrap();
    config.listen[0].tls.as_mut().unwrap().certificates[0].key = b_key.clone();
    assert!(gw.reloader.reload(config).await.is_err());
    let (_s, still) = leaf(gw.addr()).await;
    assert_eq!(still, second);
    gw.stop().await;
}

/// A reload whose new address is taken is rejected whole, with the error located like every
/// other config error (file, line, column, key), and the old snapshot keeps serving.
#[tokio::test]
async fn a_reload_to_a_taken_address_names_its_key_and_changes_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new("reload-taken");
    let file = dir.path().join("busy.yaml");
    let gw = Gateway::start(&yaml("", "")).await;
    let mut open = connect(&gw.ws_url("/ws")).await;
    let fresh = "  - path: /fresh\n    websocket: echo\n";
    for (top, expected) in [
        (
            format!("  - address: {addr}\n"),
            format!("busy.yaml:3:14: listen[1].address: cannot listen on {addr}: "),
        ),
        (
            format!("admin:\n  address: {addr}\n"),
            format!("busy.yaml:4:12: admin.address: cannot listen on {addr}: "),
        ),
    ] {
        std::fs::write(&file, yaml(fresh, &top)).unwrap();
        let config = wsgate::config::load_file(&file).unwrap();
        let err = gw.reloader.reload(config).await.unwrap_err().to_string();
        assert!(err.contains(&expected), "{err}");
        assert_eq!(gw.state.generation(), 1);
        assert_eq!(status(&gw, "/fresh").await, 404);
        assert_eq!(status(&gw, "/ws").await, 101);
        open.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            next_msg(&mut open).await.unwrap().unwrap(),
            Message::text("still here")
        );
    }
    gw.stop().await;
}

/// A gateway started on `yaml("", "")`, written to `file` too, whose watcher follows `file`.
async fn watched(file: &std::path::Path) -> (Gateway, tokio::task::JoinHandle<()>) {
    std::fs::write(file, yaml("", "")).unwrap();
    let gw = Gateway::start(&yaml("", "")).await;
    let watcher = tokio::spawn(wsgate::reload::watch_file(
        file.to_owned(),
        gw.reloader.clone(),
    ));
    (gw, watcher)
}

/// Waits, up to the wait, for the watcher to have reloaded up to `generation`: the watcher
/// runs on its own clock, so there is nothing to await but the generation itself.
async fn reaches(gw: &Gateway, generation: u64) {
    tokio::time::timeout(WAIT, async {
        while gw.state.generation() < generation {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the watcher never reloaded");
}

#[tokio::test]
async fn a_changed_file_is_reloaded_by_the_watcher() {
    let dir = TempDir::new("reload-watch");
    let file = dir.path().join("wsgate.yaml");
    let (gw, watcher) = watched(&file).await;
    std::fs::write(&file, yaml("  - path: /fresh\n    websocket: echo\n", "")).unwrap();
    reaches(&gw, 2).await;
    assert_eq!(status(&gw, "/fresh").await, 101);
    watcher.abort();
    gw.stop().await;
}

/// Puts a FIFO nobody writes to at `path`: whoever reads it next waits in the read, as on a
/// network filesystem that hangs.
fn hang_reads_of(path: &std::path::Path) {
    let fifo = path.with_extension("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    std::fs::rename(&fifo, path).unwrap();
}

/// From a plain thread (the test's runtime thread is what is at stake): waits until something
/// has the FIFO at `path` open for reading, checks that `addr` still echoes a WebSocket message
/// (raw bytes), then lets the reader go with `release`, whatever the check found.
fn echo_while_a_read_hangs(
    path: std::path::PathBuf,
    addr: std::net::SocketAddr,
    release: impl FnOnce(std::fs::File) + Send + 'static,
) -> std::thread::JoinHandle<Result<(), String>> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    std::thread::spawn(move || {
        // A non-blocking open for writing fails with ENXIO until a reader has the FIFO open;
        // once it succeeds, the reader waits in read() until this end writes or closes.
        let deadline = std::time::Instant::now() + WAIT;
        let fifo = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(&path)
            {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) => {
                    if std::time::Instant::now() > deadline {
                        return Err("nothing opened the file".into());
                    }
                    // Polling for a condition; nothing waits on time passing.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(format!("opening the FIFO: {e}")),
            }
        };
        let expected = frame(true, 1, None, b"ping");
        let echoed = (|| -> std::io::Result<Vec<u8>> {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(WAIT))?;
            s.write_all(format!("{UPGRADE}\r\n").as_bytes())?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                s.read_exact(&mut byte)?;
                head.push(byte[0]);
            }
            if !head.starts_with(b"HTTP/1.1 101") {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&head).into_owned(),
                ));
            }
            s.write_all(&frame(true, 1, MASK, b"ping"))?;
            let mut echo = vec![0u8; expected.len()];
            s.read_exact(&mut echo)?;
            Ok(echo)
        })();
        release(fifo);
        match echoed {
            Ok(echo) if echo == expected => Ok(()),
            Ok(echo) => Err(format!("unexpected echo {echo:?}")),
            Err(e) => Err(format!("no echo while the read hung: {e}")),
        }
    })
}

/// `edit; systemctl reload` is one reload: contents a SIGHUP has loaded count as seen by the
/// watcher. That the watcher does not load them again can only be seen by letting its window
/// pass (a rewrite in place stands 2 s, then a poll), so the test waits that out once; a
/// change after it is then loaded as the next generation.
#[tokio::test]
async fn a_file_a_sighup_loaded_is_not_loaded_again_by_the_watcher() {
    let dir = TempDir::new("reload-dedupe");
    let file = dir.path().join("wsgate.yaml");
    let (gw, watcher) = watched(&file).await;
    std::fs::write(&file, yaml("  - path: /first\n    websocket: echo\n", "")).unwrap();
    wsgate::reload::reload_from(&file, &gw.reloader).await;
    assert_eq!(gw.state.generation(), 2);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(gw.state.generation(), 2, "the watcher loaded it again");
    let next = dir.path().join("next.yaml");
    std::fs::write(&next, yaml("  - path: /second\n    websocket: echo\n", "")).unwrap();
    std::fs::rename(&next, &file).unwrap();
    reaches(&gw, 3).await;
    assert_eq!(status(&gw, "/second").await, 101);
    assert_eq!(
        gw.state.generation(),
        3,
        "the first change was loaded twice"
    );
    watcher.abort();
    gw.stop().await;
}

/// A file rewritten in place by a writer that pauses mid-file is not loaded half written: the
/// first half here is valid YAML without the second route, and used to be loaded (dropping
/// that route) once it had stood for one poll. Rewritten in place, a file must now stand for
/// 2 s, so only the whole file is loaded, as one reload.
#[tokio::test]
async fn a_file_rewritten_in_place_is_not_loaded_half_written() {
    use std::io::Write;
    let dir = TempDir::new("reload-half");
    let file = dir.path().join("wsgate.yaml");
    let (gw, watcher) = watched(&file).await;
    let whole = yaml(
        "  - path: /fresh\n    websocket: echo\n  - path: /second\n    websocket: echo\n",
        "",
    );
    let cut = whole.find("  - path: /second").unwrap();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap();
    out.write_all(&whole.as_bytes()[..cut]).unwrap();
    // The writer pauses (a slow copy, a script writing piecewise), longer than two polls.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    out.write_all(&whole.as_bytes()[cut..]).unwrap();
    drop(out);
    reaches(&gw, 2).await;
    assert_eq!(status(&gw, "/second").await, 101);
    assert_eq!(gw.state.generation(), 2, "the half file was loaded first");
    watcher.abort();
    gw.stop().await;
}

/// A config file whose read hangs stalls only the watcher. The test runs on one thread, the
/// server's, so a read on it would stall the echo.
#[tokio::test]
async fn a_config_file_whose_read_hangs_stalls_only_the_watcher() {
    use std::io::Write;
    let dir = TempDir::new("reload-hang");
    let file = dir.path().join("wsgate.yaml");
    let text = yaml("", "");
    std::fs::write(&file, &text).unwrap();
    let gw = Gateway::start(&text).await;
    let watcher = tokio::spawn(wsgate::reload::watch_file(
        file.clone(),
        gw.reloader.clone(),
    ));
    hang_reads_of(&file);
    let (path, replacement) = (file.clone(), dir.path().join("replacement.yaml"));
    let checker = echo_while_a_read_hangs(file.clone(), gw.addr(), move |mut fifo| {
        // The file becomes an ordinary one again, with the same text: nothing to reload.
        std::fs::write(&replacement, &text).unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        fifo.write_all(text.as_bytes()).unwrap();
    });
    let verdict = tokio::task::spawn_blocking(move || checker.join().unwrap())
        .await
        .unwrap();
    verdict.unwrap();
    watcher.abort();
    gw.stop().await;
}

/// A reload whose certificate file hangs on read stalls only that reload: the server task builds
/// the new snapshot off its worker, keeps serving on the old one, and swaps once the read ends.
#[tokio::test]
async fn a_certificate_whose_read_hangs_stalls_only_the_reload() {
    use std::io::Write;
    let pki = TestPki::new();
    let (crt, key) = pki.issue("hang", &["localhost"]);
    let gw = Gateway::start(&yaml("", "")).await;
    let with_tls = yaml(
        "",
        &format!(
            "  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\n",
            crt.display(),
            key.display()
        ),
    );
    let config = wsgate::config::load_str(&with_tls, "t.yaml", std::path::Path::new(".")).unwrap();
    // Checked to exist at load time; hangs from now on.
    let pem = std::fs::read(&key).unwrap();
    hang_reads_of(&key);
    let reloader = gw.reloader.clone();
    let reload = tokio::spawn(async move { reloader.reload(config).await });
    let (path, replacement) = (key.clone(), key.with_extension("again"));
    let checker = echo_while_a_read_hangs(key.clone(), gw.addr(), move |mut fifo| {
        std::fs::write(&replacement, &pem).unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        fifo.write_all(&pem).unwrap();
    });
    let verdict = tokio::task::spawn_blocking(move || checker.join().unwrap())
        .await
        .unwrap();
    verdict.unwrap();
    let generation = tokio::time::timeout(WAIT, reload)
        .await
        .expect("the reload never finished")
        .unwrap()
        .expect("the reload, once the read ended");
    assert_eq!(generation, 2);
    gw.stop().await;
}
