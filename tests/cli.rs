//! The `wsgate` binary itself: `check`, config errors with their location, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

/// A gateway process that is killed if the test fails before it exits, so a failing test never
/// leaves a process holding the test runner's output open.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Child {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Child {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

/// A gateway on a port of the system's choosing with one echo route.
const ECHO_ONLY: &str =
    "listen:\n  - address: 127.0.0.1:0\nroutes:\n  - path: /ws\n    websocket: echo\n";

fn wsgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    c.env_remove("WSGATE_CONFIG").env_remove("RUST_LOG");
    c
}

/// `wsgate check --config file`, run to its end.
fn check_file(file: &std::path::Path) -> std::process::Output {
    wsgate()
        .args(["check", "--config"])
        .arg(file)
        .output()
        .unwrap()
}

/// The gateway on `config` with info logs on a piped stderr, killed when dropped.
fn spawn_logging(config: &std::path::Path, extra_env: &[(&str, &std::ffi::OsStr)]) -> Child {
    let mut cmd = wsgate();
    cmd.arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Child(cmd.spawn().unwrap())
}

#[test]
fn check_accepts_a_good_file_and_the_embedded_default() {
    let dir = TempDir::new("cli-good");
    let file = dir.path().join("good.yaml");
    std::fs::write(&file, ECHO_ONLY).unwrap();
    let out = check_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = wsgate().arg("check").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("embedded default"));
}

#[test]
fn a_bad_file_names_file_line_column_and_key_and_exits_1() {
    let dir = TempDir::new("cli-bad");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "listen:\n  - address: 127.0.0.1:0\nwebsockets:\n  keep_alive_interval: 2 minutes\n",
    )
    .unwrap();
    let out = check_file(&file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:4:"), "{err}");
    assert!(err.contains("websockets.keep_alive_interval"), "{err}");

    // Unknown key; and the same file refuses to start the server (no listener is bound).
    std::fs::write(&file, "listen:\n  - address: 127.0.0.1:0\nroutez: []\n").unwrap();
    let out = wsgate().arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:3:1") && err.contains("routez"),
        "{err}"
    );

    // A missing certificate file is reported at its key.
    std::fs::write(
        &file,
        "listen:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: nope.crt\n          key: nope.key\n",
    )
    .unwrap();
    let out = wsgate().args(["check", "-c"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:5:") && err.contains("nope.crt"),
        "{err}"
    );
}

/// What `run` would refuse, `check` refuses too, at the key: CA files, certificates, and listen
/// addresses that cannot be bound together.
#[test]
fn check_refuses_what_run_would_at_its_key() {
    let dir = TempDir::new("cli-check-run");
    let file = dir.path().join("gw.yaml");
    let check = |yaml: &str| {
        std::fs::write(&file, yaml).unwrap();
        let out = check_file(&file);
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let pki = TestPki::new();
    let (crt, key) = pki.issue("site", &["localhost"]);
    let (_, other_key) = pki.issue("other", &["localhost"]);
    // A key alone holds no CERTIFICATE block: a CA file of it would trust nothing.
    let err = check(&format!(
        "listen:\n  - address: 127.0.0.1:0\nroutes:\n  - path: /a\n    upstreams: [https://app]\n    ca: {}\n",
        key.display()
    ));
    assert!(
        err.contains("gw.yaml:6:9: routes[0].ca: no CERTIFICATE block"),
        "{err}"
    );
    let err = check(&format!(
        "listen:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - cert: {}\n          key: {}\n",
        crt.display(),
        other_key.display()
    ));
    assert!(
        err.contains("gw.yaml:6:16: listen[0].tls.certificates[0].key: key does not fit"),
        "{err}"
    );
    let err = check("listen:\n  - address: 0.0.0.0:8080\n  - address: 127.0.0.1:8080\n");
    assert!(
        err.contains("gw.yaml:3:14: listen[1].address: listen address 127.0.0.1:8080 overlaps listen address 0.0.0.0:8080 at line 2"),
        "{err}"
    );
    let err = check("listen:\n  - address: 0.0.0.0:8080\nadmin:\n  address: 127.0.0.1:8080\n");
    assert!(err.contains("gw.yaml:4:12: admin.address: "), "{err}");
}

/// A port another process holds: the message names the file, line, column and key of the
/// address, as every other config error does, and gives the reason once; the admin address too.
#[test]
fn a_port_in_use_names_the_config_line_column_and_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new("cli-in-use");
    let file = dir.path().join("busy.yaml");
    let run = |yaml: String| {
        std::fs::write(&file, yaml).unwrap();
        let out = wsgate().arg("--config").arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(format!(
        "listen:\n  - address: 127.0.0.1:0\n  -   address: {addr}\n"
    ));
    assert!(
        err.contains(&format!(
            "busy.yaml:3:16: listen[1].address: cannot listen on {addr}: Address already in use"
        )),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    let err = run(format!(
        "listen:\n  - address: 127.0.0.1:0\nadmin:\n  address:  {addr}\n"
    ));
    assert!(
        err.contains(&format!(
            "busy.yaml:4:13: admin.address: cannot listen on {addr}: Address already in use"
        )),
        "{err}"
    );
}

#[test]
fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let dir = TempDir::new("cli-term");
    let file = dir.path().join("term.yaml");
    std::fs::write(
        &file,
        "listen:\n  - address: 127.0.0.1:0\nshutdown_grace: 5s\nroutes:\n  - path: /ws\n    websocket: echo\n",
    )
    .unwrap();
    let mut child = spawn_logging(&file, &[]);
    // The gateway logs the address it bound; read it rather than guess a port.
    let addr = StderrLines::of(&mut child).listening();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        let mut ws = connect(&format!("ws://{addr}/ws")).await;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        expect_close(&mut ws).await
    });
    assert_eq!(code, 1001);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sighup_reloads_and_systemd_is_notified() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("cli-hup");
    let file = dir.path().join("hup.yaml");
    // A drain window, for a SIGHUP to arrive in once shutdown has begun.
    let good = &format!("drain_delay: 2s\n{ECHO_ONLY}");
    std::fs::write(&file, good).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let recv = || {
        let mut buf = [0u8; 256];
        let n = notify
            .recv(&mut buf)
            .expect("a notification within the wait");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut child = spawn_logging(&file, &[("NOTIFY_SOCKET", notify_path.as_ref())]);
    assert_eq!(recv(), "READY=1");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut wait_for = |needle: &str| loop {
        let line = lines.next().expect("gateway exited").unwrap();
        if line.contains(needle) {
            return line;
        }
    };
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // A broken file is rejected with its location; the process keeps running.
    std::fs::write(
        &file,
        "listen:\n  - address: 127.0.0.1:0\nroutes:\n  - pth: /x\n",
    )
    .unwrap();
    hup();
    let line = wait_for("reload rejected");
    assert!(line.contains("hup.yaml:4:"), "{line}");
    assert!(recv().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert_eq!(recv(), "READY=1");
    // A good one is swapped in.
    std::fs::write(
        &file,
        format!("{good}  - path: /more\n    websocket: echo\n"),
    )
    .unwrap();
    hup();
    let line = wait_for("configuration reloaded");
    assert!(line.contains("generation=2"), "{line}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Notifications from the watcher's reload may come in between; STOPPING=1 must come.
    while recv() != "STOPPING=1" {}
    // A SIGHUP during the drain is not taken: no RELOADING=1 after STOPPING=1, which the
    // service manager would wait on for a READY=1 that never comes.
    wait_for("shutting down");
    hup();
    wait_for("the configuration is not reloaded");
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(child.wait().unwrap().code(), Some(0));
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    while let Ok(n) = notify.recv(&mut buf) {
        let late = String::from_utf8_lossy(&buf[..n]);
        assert!(!late.starts_with("RELOADING"), "after STOPPING=1: {late}");
    }
}

#[test]
fn the_shipped_example_configs_are_valid() {
    // mixed-site.yaml names ../certs/localhost.{crt,key}: give it a copy of the tree with test
    // certificates in that place.
    let pki = TestPki::new();
    let (crt, key) = pki.issue("localhost", &["localhost"]);
    let tree = TempDir::new("cli-examples");
    std::fs::create_dir_all(tree.path().join("config")).unwrap();
    std::fs::create_dir_all(tree.path().join("certs")).unwrap();
    std::fs::copy(&crt, tree.path().join("certs/localhost.crt")).unwrap();
    std::fs::copy(&key, tree.path().join("certs/localhost.key")).unwrap();
    let examples = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap();
    let mut checked = 0;
    for entry in examples {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let copy = tree.path().join("config").join(path.file_name().unwrap());
            std::fs::copy(&path, &copy).unwrap();
            let out = check_file(&copy);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} example configs found");
}

#[test]
fn access_log_lines_match_sessions_and_reload_adds_and_removes_listeners() {
    let dir = TempDir::new("cli-access");
    let file = dir.path().join("access.yaml");
    let one = "listen:\n  - address: 127.0.0.1:0\nlog_format: json\ntrusted_proxies: [127.0.0.0/8]\nroutes:\n  - path: /ws\n    websocket: echo\n";
    std::fs::write(&file, one).unwrap();
    let mut child = spawn_logging(&file, &[]);
    let mut lines = StderrLines::of(&mut child);
    let listening = |line: &str| {
        line.contains("\"message\":\"listening\"")
            .then(|| {
                line.split("\"address\":\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .flatten()
    };
    let first = listening(&lines.next_matching(|l| listening(l).is_some())).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures_util::SinkExt;
        let mut ws = connect(&format!("ws://{first}/ws")).await;
        for m in ["one", "two"] {
            ws.send(tungstenite::Message::text(m)).await.unwrap();
            next_msg(&mut ws).await.unwrap().unwrap();
        }
        ws.send(tungstenite::Message::Close(Some(
            tungstenite::protocol::CloseFrame {
                code: 4002.into(),
                reason: "bye".into(),
            },
        )))
        .await
        .unwrap();
        assert_eq!(expect_close(&mut ws).await, 4002);
    });
    // The upgrade's request line names the route that took it.
    let upgrade = lines
        .next_matching(|l| l.contains("\"message\":\"request\"") && l.contains("\"path\":\"/ws\""));
    for field in ["\"status\":101", "\"route\":\"/ws\""] {
        assert!(upgrade.contains(field), "{field} missing in {upgrade}");
    }
    // One access line for the session, with what went through it and who closed it.
    let session = lines.next_matching(|l| l.contains("\"message\":\"session ended\""));
    for field in [
        "\"target\":\"wsgate::access\"",
        "\"code\":4002",
        "\"closed_by\":\"client\"",
        "\"messages_in\":2",
        "\"messages_out\":2",
        "\"bytes_in\":6",
        "\"mode\":\"echo\"",
        "\"route\":\"/ws\"",
    ] {
        assert!(session.contains(field), "{field} missing in {session}");
    }

    // A reload adds a second listener; it serves at once. Another reload removes it.
    std::fs::write(
        &file,
        one.replace("listen:\n", "listen:\n  - address: 127.0.0.2:0\n"),
    )
    .unwrap();
    let hup = |child: &Child| {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup(&child);
    let second = listening(
        &lines.next_matching(|l| listening(l).is_some_and(|a| a.starts_with("127.0.0.2:"))),
    )
    .unwrap();
    let health = rt.block_on(async {
        let (mut s, head) = raw_request(
            second.parse().unwrap(),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n",
        )
        .await;
        read_to_eof(&mut s).await;
        status_of(&head)
    });
    assert_eq!(health, 200);
    // The request line names the client as the session lines do: from a trusted proxy, the
    // address it forwarded for.
    let request =
        lines.next_matching(|l| l.contains("\"message\":\"request\"") && l.contains("/healthz"));
    // Health is the gateway's own, on no route.
    for field in [
        "\"status\":200",
        "\"client\":\"203.0.113.7\"",
        "\"route\":\"-\"",
    ] {
        assert!(request.contains(field), "{field} missing in {request}");
    }
    // Over HTTP/2 too, with the connection's span (peer and listener) as over HTTP/1: hyper
    // runs each HTTP/2 stream in a task of its own.
    let listener = format!("\"listener\":\"{second}\"");
    assert!(
        request.contains(&listener),
        "{listener} missing in {request}"
    );
    let h2 = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&second).await.unwrap();
        let req = http::Request::get(format!("http://{second}/healthz"))
            .header("x-forwarded-for", "198.51.100.2")
            .body(app_body(""))
            .unwrap();
        h2_send(tcp, req).await.status()
    });
    assert_eq!(h2, 200);
    let request = lines.next_matching(|l| {
        l.contains("\"message\":\"request\"") && l.contains("\"client\":\"198.51.100.2\"")
    });
    assert!(
        request.contains(&listener),
        "{listener} missing in {request}"
    );
    std::fs::write(&file, one).unwrap();
    hup(&child);
    lines.next_matching(|l| l.contains("listener removed"));
    let refused = std::net::TcpStream::connect(&second);
    assert!(refused.is_err(), "the removed listener still accepts");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Reads `child`'s stderr on a thread, to its end, so the gateway never blocks on a full pipe;
/// `next_matching` waits (up to `WAIT`) for a line.
struct StderrLines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl StderrLines {
    fn of(child: &mut Child) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    fn next_matching(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let Ok(line) = self.rx.recv_timeout(WAIT) else {
                panic!("no such log line; saw:\n{}", self.seen.join("\n"));
            };
            self.seen.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    }

    /// The address from the first `listening` line.
    fn listening(&mut self) -> String {
        let line = self.next_matching(|l| l.contains("listening") && l.contains("address="));
        let rest = line.split("address=").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().to_owned()
    }
}

/// Plain level and target filters are installed without span tracking; a filter that selects by
/// span still works, and a `RUST_LOG` that does not parse is said, not silently dropped.
#[test]
fn rust_log_span_directives_work_and_a_bad_rust_log_is_reported() {
    let dir = TempDir::new("cli-rust-log");
    let file = dir.path().join("log.yaml");
    std::fs::write(&file, ECHO_ONLY).unwrap();

    // Only the span directive lets a session's access line (info, target wsgate::access)
    // through: the rest of the filter is warn, and info for wsgate::server alone. A field's
    // value is written bare, as README's example has it: `mode="echo"` would match nothing.
    let filter = std::ffi::OsStr::new("warn,wsgate::server=info,[ws{mode=echo}]=info");
    let mut child = spawn_logging(&file, &[("RUST_LOG", filter)]);
    let mut lines = StderrLines::of(&mut child);
    let addr = lines.listening();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures_util::SinkExt;
        let mut ws = connect(&format!("ws://{addr}/ws")).await;
        ws.send(tungstenite::Message::text("hello")).await.unwrap();
        next_msg(&mut ws).await.unwrap().unwrap();
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = next_msg(&mut ws).await {}
    });
    let session = lines.next_matching(|l| l.contains("session ended"));
    assert!(
        session.contains("wsgate::access") && session.contains("mode=\"echo\""),
        "{session}"
    );
    drop(child);

    // A level that does not exist: the gateway says so and logs at log_level (info).
    let bad = std::ffi::OsStr::new("wsgate=loud");
    let mut child = spawn_logging(&file, &[("RUST_LOG", bad)]);
    let mut lines = StderrLines::of(&mut child);
    let warning = lines.next_matching(|l| l.contains("RUST_LOG is not a valid log filter"));
    assert!(
        warning.contains("WARN") && warning.contains("rust_log=wsgate=loud"),
        "{warning}"
    );
    lines.listening();
}

/// An app that breaks off mid-body is named in a warning, as one whose body stalls is: the
/// client only sees its connection end, and hyper's line for that names neither app nor route.
#[test]
fn an_upstream_body_cut_short_is_a_warning_naming_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Content-Length 10, five bytes, and the connection closed once the client has them: closed
    // at once, hyper may find the end before it has sent the head on, and send nothing.
    let delivered = std::sync::Arc::new(tokio::sync::Notify::new());
    let app = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let delivered = delivered.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let delivered = delivered.clone();
                tokio::spawn(async move {
                    read_head(&mut s).await;
                    let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
                    let _ = s.write_all(cut).await;
                    delivered.notified().await;
                    let _ = s.shutdown().await;
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                });
            }
        });
        addr
    });
    let dir = TempDir::new("cli-body-cut");
    let file = dir.path().join("cut.yaml");
    let yaml = format!(
        "listen:\n  - address: 127.0.0.1:0\nroutes:\n  - path: /app\n    upstreams: [http://{app}]\n"
    );
    std::fs::write(&file, yaml).unwrap();
    let mut child = spawn_logging(&file, &[]);
    let mut lines = StderrLines::of(&mut child);
    let addr: std::net::SocketAddr = lines.listening().parse().unwrap();

    let body = rt.block_on(async {
        let request = b"GET /app HTTP/1.1\r\nHost: gateway.test\r\n\r\n";
        let (mut s, head) = raw_request(addr, request).await;
        assert_eq!(status_of(&head), 200, "{head}");
        let mut body = read_exactly(&mut s, 5).await;
        delivered.notify_one();
        body.extend(read_to_eof(&mut s).await);
        body
    });
    assert_eq!(
        body, b"short",
        "the client's connection ends where the app's did"
    );
    let warning = lines.next_matching(|l| l.contains("upstream response body failed"));
    for field in [
        " WARN ",
        "route=/app ",
        &format!("upstream=\"http://{app}\""),
    ] {
        assert!(warning.contains(field), "{field} missing in {warning}");
    }
}
