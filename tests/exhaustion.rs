//! The gateway out of file descriptors. The test process shares its descriptor table with the
//! gateway it runs, so taking every free descriptor here takes them from the gateway too; the
//! tests of this file take turns, as each one does that.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Runs one test of this file at a time, on a runtime built once its turn has come: a runtime
/// opens descriptors of its own, which it cannot while another test holds every one.
fn in_turn(test: impl std::future::Future<Output = ()>) {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// Lowers the soft limit on open files, so that taking every free descriptor takes a few
/// hundred, not whatever the system allows.
fn low_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.map_or(512, |c| c.min(512));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(current),
            maximum: limit.maximum,
        },
    )
    .unwrap();
}

/// Every descriptor the process could still open, held until dropped.
fn take_every_fd() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()) => {
                return held
            }
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }
}

/// A connection the gateway has accepted and served a request on, so that it holds its
/// descriptor before the test takes the rest.
async fn served_connection(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(status_of(&head), 200, "{head}");
    read_exactly(&mut s, 3).await; // "ok\n"
    s
}

/// Out of descriptors, the gateway cannot open a socket to any upstream: that is its own limit
/// (503), not the app's failure (502), and no reason to eject an upstream that is up, which
/// would keep refusing clients for the cooldown after the descriptors came back.
#[test]
fn upstream_connects_out_of_descriptors_get_503_and_eject_nothing() {
    in_turn(async {
        low_file_limit();
        let app = spawn_ws_app(None).await;
        let http_app =
            spawn_http_app(None, |_req| async { hyper::Response::new(app_body("hi")) }).await;
        let gw = Gateway::start(&format!(
        "listen:\n{}routes:\n  - path: /relay\n    websocket: relay\n    upstreams: [\"{}\"]\n  - path: /pass\n    websocket: passthrough\n    upstreams: [\"{}\"]\n  - path: /http\n    upstreams: [\"http://{http_app}\"]\n",
        plain_listener(),
        app.url(),
        app.url(),
    ))
    .await;
        let upgrade = |path: &str| UPGRADE.replace("GET /ws ", &format!("GET {path} ")) + "\r\n";
        let get = b"GET /http HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let requests = [
            ("relay", upgrade("/relay").into_bytes()),
            ("passthrough", upgrade("/pass").into_bytes()),
            ("http", get),
        ];
        let mut held = Vec::new();
        for (what, request) in &requests {
            // More than the consecutive failures that eject an upstream.
            for _ in 0..4 {
                let mut s = served_connection(&gw).await;
                let hog = take_every_fd();
                s.write_all(request).await.unwrap();
                let head = read_head(&mut s).await;
                drop(hog);
                assert_eq!(status_of(&head), 503, "{what}: {head}");
                // Nothing of this turn may free a descriptor during the next one: a refused upgrade's
                // connection is closed once the gateway has closed its side, a 503 to a plain request
                // keeps its connection, which is held.
                if *what == "http" {
                    held.push(s);
                } else {
                    read_to_eof(&mut s).await;
                }
            }
            let (s, head) = raw_request(gw.addr(), request).await;
            let expected = if *what == "http" { 200 } else { 101 };
            assert_eq!(
                status_of(&head),
                expected,
                "{what} once descriptors are back: {head}"
            );
            drop(s);
            // Likewise its session's two sockets.
            wait_until("the session ended", || gw.state.limiter.open() == 0).await;
        }
        gw.stop().await;
    });
}

/// The process's CPU time so far.
fn cpu_time() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A connection the admin listener cannot take for want of a descriptor stays in its backlog,
/// so each accept fails at once: the admin loop must back off as the public listeners do, not
/// spin a core for as long as the shortage lasts.
#[test]
fn the_admin_listener_backs_off_when_out_of_descriptors() {
    in_turn(async {
        low_file_limit();
        let gw = Gateway::start(&format!(
        "listen:\n{}admin:\n  address: 127.0.0.1:0\nroutes:\n  - path: /ws\n    websocket: echo\n",
        plain_listener()
    ))
        .await;
        let admin = gw.admin.expect("admin listener bound");
        let mut hog = take_every_fd();
        hog.pop();
        // Takes the last descriptor; the gateway has none left to accept it with.
        let _waiting = TcpStream::connect(admin).await.unwrap();
        let window = std::time::Duration::from_millis(500);
        let before = cpu_time();
        tokio::time::sleep(window).await;
        let spent = cpu_time() - before;
        drop(hog);
        assert!(
            spent < window / 2,
            "{spent:?} of CPU in {window:?} while the admin listener could not accept"
        );
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(status_of(&read_head(&mut s).await), 200);
        gw.stop().await;
    });
}

/// What a test's gateway logs, as text.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

/// A listener out of descriptors retries every 50 ms; it says so once, and once that it
/// accepts again, rather than a line at every retry for as long as the shortage lasts.
#[test]
fn an_accept_failure_is_logged_once_per_shortage() {
    in_turn(async {
        low_file_limit();
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // The test's runtime has one thread, which runs the gateway too.
        let _logging = tracing::subscriber::set_default(subscriber);
        let gw = Gateway::start(&format!(
            "listen:\n{}routes:\n  - path: /ws\n    websocket: echo\n",
            plain_listener()
        ))
        .await;
        let mut hog = take_every_fd();
        hog.pop();
        let mut waiting = TcpStream::connect(gw.addr()).await.unwrap();
        // Several retries' worth.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(hog);
        waiting
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(status_of(&read_head(&mut waiting).await), 200);
        assert_eq!(logs.count("accept failed"), 1, "one line per shortage");
        assert_eq!(logs.count("accepting again"), 1);
        gw.stop().await;
    });
}

/// Out of descriptors, the config watcher cannot read its file, which says nothing about the
/// file. Taken for a change, it gave a reload that failed during the shortage (a false alert,
/// counted as a failed reload) and, after it, a reload of the unchanged file.
#[test]
fn the_config_watcher_takes_a_file_it_cannot_read_for_no_change() {
    in_turn(async {
        low_file_limit();
        let dir = TempDir::new("exhaustion-watch");
        let file = dir.path().join("wsgate.yaml");
        let yaml = |more: &str| {
            format!(
                "listen:\n{}routes:\n  - path: /ws\n    websocket: echo\n{more}",
                plain_listener()
            )
        };
        std::fs::write(&file, yaml("")).unwrap();
        let gw = Gateway::start(&yaml("")).await;
        let watcher = tokio::spawn(wsgate::reload::watch_file(
            file.clone(),
            gw.reloader.clone(),
        ));
        let held = take_every_fd();
        // The shortage is the scenario: it outlasts the 2 s a file rewritten in place must hold
        // (the file is the same inode throughout), so a read that failed was loaded as a change.
        tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
        drop(held);
        std::fs::write(&file, yaml("  - path: /fresh\n    websocket: echo\n")).unwrap();
        tokio::time::timeout(WAIT, async {
            while gw.state.generation() < 2 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the real change was never loaded");
        let metrics = gw.state.metrics.render(std::iter::empty());
        assert!(
            !metrics.contains("wsgate_config_reloads_total{outcome=\"failed\"}"),
            "a reload failed during the shortage:\n{metrics}"
        );
        assert_eq!(gw.state.generation(), 2);
        watcher.abort();
        gw.stop().await;
    });
}
