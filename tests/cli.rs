//! The `wsgate` binary itself: `check`, config errors with their location, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

fn wsgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    c.env_remove("WSGATE_CONFIG").env_remove("RUST_LOG");
    c
}

#[test]
fn check_accepts_a_good_file_and_the_embedded_default() {
    let dir = TempDir::new("cli-good");
    let file = dir.path().join("good.yaml");
    std::fs::write(
        &file,
        "listen:\n  - address: 127.0.0.1:0\nroutes:\n  - path: /ws\n    websocket: echo\n",
    )
    .unwrap();
    let out = wsgate()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
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
    let out = wsgate()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
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

#[test]
fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let dir = TempDir::new("cli-term");
    let file = dir.path().join("term.yaml");
    std::fs::write(
        &file,
        "listen:\n  - address: 127.0.0.1:0\nshutdown_grace: 5s\nroutes:\n  - path: /ws\n    websocket: echo\n",
    )
    .unwrap();
    let mut child = wsgate()
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The gateway logs the address it bound; read it rather than guess a port.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("gateway exited before listening")
            .unwrap();
        if let Some(rest) = line.split("address=").nth(1) {
            if line.contains("listening") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        }
    };
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
    std::thread::spawn(move || for _ in lines {});
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sighup_reloads_and_systemd_is_notified() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("cli-hup");
    let file = dir.path().join("hup.yaml");
    let good = "listen:\n  - address: 127.0.0.1:0\nroutes:\n  - path: /ws\n    websocket: echo\n";
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
    let mut child = wsgate()
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(child.wait().unwrap().code(), Some(0));
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
            let out = wsgate()
                .args(["check", "--config"])
                .arg(&copy)
                .output()
                .unwrap();
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
