//! What triggers a reload: SIGHUP, or a change to the config file. The file is watched by
//! content rather than with inotify, because Kubernetes updates a mounted ConfigMap by swapping
//! a symlink, and editors replace files by rename: both defeat watches on the old inode, while a
//! cheap read every half second sees every real change. A change must stay put for one more
//! poll (debounce) so a file caught mid-write is not loaded; a file rewritten in place (same
//! inode: truncated, then written) must stay put for [`IN_PLACE_QUIET`], since a writer that
//! pauses mid-file would otherwise have its first half loaded, and a first half is often valid
//! YAML that lacks routes. A replaced file (rename, symlink swap) is whole when it appears.
//!
//! Every read of the file happens on tokio's blocking pool, never on a worker: on a network
//! filesystem that hangs, a read would otherwise stall every connection sharing that worker (all
//! of them under the single-threaded scheduler). The watcher awaits each read before starting
//! the next, so a hung one holds one blocking thread, not one per poll.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::info;

use crate::config;
use crate::notify;
use crate::server::Reloader;

const POLL: Duration = Duration::from_millis(500);
/// How long a file rewritten in place must stay unchanged before it is loaded.
const IN_PLACE_QUIET: Duration = Duration::from_secs(2);

/// Loads and applies the file once; errors are logged and counted, the old config stays.
/// Once shutdown has begun it does nothing: the service manager has been told STOPPING, and a
/// RELOADING after it would never be followed by READY.
pub async fn reload_from(path: &Path, reloader: &Reloader) {
    if reloader.stopping() {
        info!("shutting down; the configuration is not reloaded");
        return;
    }
    let _ = notify::notify(&notify::reloading_message());
    let owned = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || {
        // Read just before the load, so a change made after it is still seen by the watcher.
        let seen = fingerprint(&owned);
        (seen, config::load_file(&owned))
    })
    .await
    .map(|(seen, loaded)| {
        reloader.loading(seen);
        loaded
    });
    match loaded {
        Ok(Ok(config)) => {
            // The server logs and counts both outcomes of the swap itself, unless shutdown
            // began meanwhile and it took no reload at all.
            if let Err(e) = reloader.reload(config).await {
                if reloader.stopping() {
                    info!(error = %e, "shutting down; the configuration is not reloaded");
                    return;
                }
            }
        }
        Ok(Err(e)) => reloader.rejected(&e),
        Err(e) => reloader.rejected(&format_args!("reading the configuration failed: {e}")),
    }
    let _ = notify::notify("READY=1");
}

/// Reloads whenever the file's contents change from what they are now (read at the call, not
/// when the task first runs, so a change made right after is not missed). Runs until dropped.
/// The first read happens in the call, on the caller's thread: it runs at startup, right after
/// the same file was read to start the server.
///
/// Contents a SIGHUP has loaded in the meantime count as seen (see [`Reloader::loading`]).
pub fn watch_file(path: PathBuf, reloader: Reloader) -> impl std::future::Future<Output = ()> {
    reloader.loading(fingerprint(&path));
    watch_from(path, reloader)
}

async fn watch_from(path: PathBuf, reloader: Reloader) {
    let mut last = look_off_worker(&path).await.unwrap_or(Look {
        contents: None,
        file: None,
    });
    while !reloader.stopping() {
        tokio::time::sleep(POLL).await;
        let Some(mut seen) = look_off_worker(&path).await else {
            continue;
        };
        if seen.contents == reloader.last_loaded() {
            last = seen;
            continue;
        }
        // Changed: wait until it stays put long enough for how it was written.
        let mut quiet = quiet_for(&last, &seen);
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(POLL).await;
            let Some(now) = look_off_worker(&path).await else {
                continue;
            };
            if now.contents != seen.contents {
                quiet = quiet.max(quiet_for(&seen, &now));
                seen = now;
                since = tokio::time::Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        last = seen;
        if seen.contents == reloader.last_loaded() {
            continue; // loaded by a SIGHUP meanwhile
        }
        info!(file = %path.display(), "configuration file changed");
        reload_from(&path, &reloader).await;
    }
}

/// What the watcher sees of the file: a fingerprint of its contents and the file it is (so a
/// rewrite in place is told from a replacement).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Look {
    contents: Option<u64>,
    file: Option<(u64, u64)>,
}

/// The quiet time a change from `before` to `after` needs: longer when the same file was
/// rewritten in place, since its writer may not be done.
fn quiet_for(before: &Look, after: &Look) -> Duration {
    if after.file.is_some() && after.file == before.file {
        IN_PLACE_QUIET
    } else {
        POLL
    }
}

/// `None` when the file could not be looked at for want of the process's own resources (out of
/// file descriptors or memory): that says nothing about the file, and taking it for a change
/// would reload (and fail, and count a failed reload) during the shortage, then reload the
/// unchanged file after it. A missing or unreadable file is a change: its reload fails and says
/// why.
async fn look_off_worker(path: &Path) -> Option<Look> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::MetadataExt;
        // The identity first: a replacement between the two reads then shows as a change of
        // contents at the next poll, not as a rewrite in place.
        let file = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        let contents = match read_fingerprint(&path) {
            Ok(hash) => Some(hash),
            Err(e) if crate::error::out_of_resources(&e) => return None,
            Err(_) => None,
        };
        Some(Look { contents, file })
    })
    .await
    .ok()
    .flatten()
}

/// Reloads on every SIGHUP. The signal stream is made by the caller before the service is
/// announced ready, since a SIGHUP that arrives before the handler exists would kill the process.
pub async fn on_sighup(
    mut hup: tokio::signal::unix::Signal,
    path: Option<PathBuf>,
    reloader: Reloader,
) {
    while hup.recv().await.is_some() {
        info!("SIGHUP received");
        match &path {
            Some(p) => reload_from(p, &reloader).await,
            None => info!("running on the embedded default; there is no file to reload"),
        }
    }
}

fn fingerprint(path: &Path) -> Option<u64> {
    read_fingerprint(path).ok()
}

fn read_fingerprint(path: &Path) -> std::io::Result<u64> {
    let bytes = std::fs::read(path)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Ok(h.finish())
}
