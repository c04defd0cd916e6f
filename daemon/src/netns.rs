//! Network namespaces: entering one, on a thread made for the purpose or in
//! a child between fork and exec. (Making one is the lab's: `palisade-lab`'s
//! `netns`.)
//!
//! Only the network namespace is switched, and only on a thread made for the
//! purpose that ends with the closure: `ip netns exec` also remounts /sys,
//! which would hide bpffs, and a switched thread must never be reused (or
//! held across an `.await`).

use std::{fs::File, io, os::fd::AsFd, path::Path};

use nix::{
    net::if_::{if_indextoname, if_nametoindex},
    sched::{CloneFlags, setns},
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the thread running in network namespace {0} panicked")]
    Panicked(String),
    #[error("creating network namespace {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} in network namespace {name}: {source}")]
    Io {
        name: String,
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Moves the calling thread into the network namespace `ns` (a namespace
/// file descriptor). Also what a child does between fork and exec to start
/// in a namespace: setns is async-signal-safe.
pub fn enter(ns: impl AsFd) -> io::Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Runs `f` on a new thread inside the network namespace at `path` (such as
/// `/run/netns/NAME` or `/proc/PID/ns/net`) and returns its result.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let shown = path.display().to_string();
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: shown.clone(),
        source,
    })?;
    run_in(&ns, &shown, f)
}

/// Runs `f` on a new thread inside `ns` (a namespace file), named `shown`
/// in errors.
pub fn run_in<T: Send>(
    ns: &File,
    shown: &str,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread ends when `f` returns: the switch never leaks.
            enter(ns).map_err(|source| NetnsError::Enter {
                path: shown.to_owned(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked(shown.to_owned()))?
    })
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    if_nametoindex(name).map_err(|e| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {name}: {}", io::Error::from(e)),
        )
    })
}

/// The name of interface `index` in the calling thread's namespace.
/// An index no interface has is an error (`ENXIO`).
pub fn ifname(index: u32) -> io::Result<String> {
    let name = if_indextoname(index).map_err(io::Error::from)?;
    // nix 0.31 takes libc's NULL for success and returns an empty name.
    if name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface has index {index}"),
        ));
    }
    Ok(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::ifname;

    #[test]
    fn an_index_no_interface_has_is_an_error_not_an_empty_name() {
        // Loopback is index 1 in every network namespace; 0 is never used.
        assert_eq!(ifname(1).unwrap(), "lo");
        assert!(ifname(0).is_err());
        assert!(ifname(u32::MAX).is_err());
    }
}
