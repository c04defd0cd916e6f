//! Wakes a waiter when a file of a directory is written or replaced, so
//! that waiting for the daemon's status file costs nothing between its
//! writes. A 1 ms polling loop in its place took about half of the QEMU
//! guest's one host thread (`thread=single`) away from the daemon it was
//! waiting for: the verifier at its start ran twice as long.

use std::{path::Path, time::Duration};

use inotify::{Inotify, WatchMask};
use tokio::io::unix::AsyncFd;

/// Without inotify the waiter polls at this grain, as it always did.
const POLL: Duration = Duration::from_millis(1);

pub struct DirWatch {
    inotify: Option<AsyncFd<Inotify>>,
    buffer: [u8; 1024],
}

impl DirWatch {
    /// Watches `dir` (it must exist) for files closed after writing and
    /// files moved in: an atomic replacement is the latter. Called on a
    /// tokio runtime with IO enabled (the lab's are built `enable_all`).
    pub fn new(dir: &Path) -> Self {
        let inotify = Inotify::init().ok().and_then(|i| {
            i.watches()
                .add(dir, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)
                .ok()?;
            // `Inotify::init` makes the descriptor non-blocking, as
            // AsyncFd needs.
            // SAFETY: the Inotify owns its descriptor and the AsyncFd owns
            // the Inotify, so the descriptor stays open and the same until
            // the AsyncFd is dropped.
            unsafe { AsyncFd::register(i) }.ok()
        });
        Self {
            inotify,
            buffer: [0; 1024],
        }
    }

    /// Returns when a file of the directory was written or replaced since
    /// the last call (or since [`DirWatch::new`]), or after `at_most`.
    pub async fn changed(&mut self, at_most: Duration) {
        let Some(fd) = &mut self.inotify else {
            tokio::time::sleep(POLL.min(at_most)).await;
            return;
        };
        let buffer = &mut self.buffer;
        let woken = tokio::time::timeout(at_most, async {
            loop {
                // The reactor gone (the runtime shutting down): no more
                // wake-ups will come.
                let Ok(mut ready) = fd.readable_mut().await else {
                    return false;
                };
                match ready.try_io(|i| i.get_mut().read_events(buffer).map(|e| e.count())) {
                    // Events, or an error a poll would not mend either:
                    // the caller looks again and the timeout paces it.
                    Ok(_) => return true,
                    // Woken without events: wait again.
                    Err(_) => continue,
                }
            }
        })
        .await;
        if woken == Ok(false) {
            // From now on the waiter polls, as it did before.
            self.inotify = None;
        }
    }
}

/// Closing an inotify descriptor waits for the kernel to free its watch
/// (an SRCU grace period: milliseconds, more on an idle machine), and a
/// waiter drops its watch just before it reports what it waited for:
/// the close is left to a thread of its own, off the caller's clock.
impl Drop for DirWatch {
    fn drop(&mut self) {
        if let Some(fd) = self.inotify.take() {
            std::thread::spawn(move || drop(fd));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_replaced_file_wakes_the_waiter_and_silence_does_not() {
        let dir = std::env::temp_dir().join(format!("palisade-dirwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut watch = DirWatch::new(&dir);
        assert!(watch.inotify.is_some(), "no inotify here");
        let quiet = Instant::now();
        watch.changed(Duration::from_millis(200)).await;
        assert!(
            quiet.elapsed() >= Duration::from_millis(200),
            "woke without a write"
        );
        let writer = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                std::fs::write(dir.join(".s.tmp"), "x").unwrap();
                std::fs::rename(dir.join(".s.tmp"), dir.join("s")).unwrap();
            })
        };
        let woke = Instant::now();
        watch.changed(Duration::from_secs(30)).await;
        assert!(
            woke.elapsed() < Duration::from_secs(30),
            "the write did not wake it"
        );
        writer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
