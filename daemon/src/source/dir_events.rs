//! Which files of the file source's directory changed since the last
//! reading, by name: an inotify instance of the reader's own, drained by
//! each reading. The kernel queues a file's event inside the write, close,
//! rename or unlink made through the directory, so a reading that drains
//! the queue after reading the revision file has the events of every file
//! written that way before that revision. What changes a file without
//! passing through the directory (a symbolic link's target, a write
//! through another hard link or another machine's mount) has no event:
//! the reader looks at every file where a listed file is a symbolic link,
//! and every 10 s in any case. With those names a reading looks at the files
//! named and takes the others as it last read them, instead of asking the
//! kernel for every file's metadata (a `stat` and a few path comparisons
//! each, hundreds of files: a millisecond or more of every pass).

use std::{
    collections::BTreeSet,
    ffi::OsString,
    io,
    path::{Path, PathBuf},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

/// Past this many names, a reading looks at every file.
const MOST: usize = 1024;

/// What changed since the last [`DirEvents::take`].
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    /// Not known by name: the reading must look at every file.
    All,
    /// The directory entries named by an event (any kind of file).
    Names(BTreeSet<OsString>),
}

pub struct DirEvents {
    inotify: Inotify,
    dir: PathBuf,
    watch: Option<WatchDescriptor>,
    /// Whether a failure to set the watch was logged (once, not per pass).
    told: bool,
}

impl DirEvents {
    /// `None` where inotify is unavailable: every reading then looks at
    /// every file, as it always could.
    pub fn new(dir: &Path) -> Option<Self> {
        match Inotify::init() {
            Ok(inotify) => Some(Self {
                inotify,
                dir: dir.to_owned(),
                watch: None,
                told: false,
            }),
            Err(e) => {
                tracing::info!(
                    "no inotify instance ({e}): each reading of the source looks at every file"
                );
                None
            }
        }
    }

    /// The names the queue holds, which it empties. `All` where the queue
    /// cannot vouch for the files it does not name: no watch was set until
    /// now (it is set here, before the reading looks at the files, so that
    /// nothing written meanwhile is missed), the queue overflowed, or the
    /// directory itself went or moved.
    pub fn take(&mut self) -> Changed {
        let mut all = self.watch.is_none();
        if all {
            let mask = WatchMask::MODIFY
                | WatchMask::CLOSE_WRITE
                | WatchMask::ATTRIB
                | WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::MOVED_TO
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF;
            match self.inotify.watches().add(&self.dir, mask) {
                Ok(watch) => self.watch = Some(watch),
                Err(e) if !self.told => {
                    tracing::info!(
                        "no inotify watch on {} ({e}): each reading looks at every file",
                        self.dir.display()
                    );
                    self.told = true;
                }
                Err(_) => {}
            }
        }
        let mut names = BTreeSet::new();
        let mut buffer = [0u8; 4096];
        loop {
            let events = match self.inotify.read_events(&mut buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!("inotify: {e}");
                    all = true;
                    break;
                }
            };
            for event in events {
                if event
                    .mask
                    .intersects(EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                {
                    // Set again, on whatever the path now names, by the
                    // next reading.
                    if let Some(watch) = self.watch.take() {
                        let _ = self.inotify.watches().remove(watch);
                    }
                    all = true;
                } else if event.mask.contains(EventMask::Q_OVERFLOW) {
                    all = true;
                } else if let Some(name) = event.name
                    && !all
                {
                    names.insert(name.to_owned());
                    all = names.len() > MOST;
                }
            }
        }
        if all {
            Changed::All
        } else {
            Changed::Names(names)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("palisade-dir-events-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(list: &[&str]) -> Changed {
        Changed::Names(list.iter().map(OsString::from).collect())
    }

    #[test]
    fn names_what_was_written_renamed_or_removed_since_the_last_take() {
        let dir = temp_dir("names");
        fs::write(dir.join("before.yaml"), "a").unwrap();
        let Some(mut events) = DirEvents::new(&dir) else {
            eprintln!("skipped: inotify unavailable");
            return;
        };
        // The first take sets the watch: nothing is known by name yet.
        assert_eq!(events.take(), Changed::All);
        assert_eq!(events.take(), names(&[]));
        fs::write(dir.join("a.yaml"), "a").unwrap();
        fs::write(dir.join(".tmp"), "b").unwrap();
        fs::rename(dir.join(".tmp"), dir.join("b.yaml")).unwrap();
        fs::remove_file(dir.join("before.yaml")).unwrap();
        assert_eq!(
            events.take(),
            names(&[".tmp", "a.yaml", "b.yaml", "before.yaml"])
        );
        assert_eq!(events.take(), names(&[]));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_directory_gone_or_too_many_names_cannot_vouch_for_the_rest() {
        let dir = temp_dir("gone");
        let Some(mut events) = DirEvents::new(&dir) else {
            eprintln!("skipped: inotify unavailable");
            return;
        };
        assert_eq!(events.take(), Changed::All);
        for i in 0..=MOST {
            fs::write(dir.join(format!("{i}.yaml")), "a").unwrap();
        }
        assert_eq!(events.take(), Changed::All);
        assert_eq!(events.take(), names(&[]));
        // Replaced: the old directory's watch ends, and the new one is
        // watched from the next take on, which names nothing it knows.
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir_all(&dir).unwrap();
        assert_eq!(events.take(), Changed::All);
        assert_eq!(events.take(), Changed::All);
        fs::write(dir.join("new.yaml"), "a").unwrap();
        assert_eq!(events.take(), names(&["new.yaml"]));
        let _ = fs::remove_dir_all(&dir);
    }
}
