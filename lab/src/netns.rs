//! A network namespace of the lab's own (the node, the pods, the outside,
//! and the tests' and the bench's), made with `unshare(2)` and held by file
//! descriptor. Entering one is the library's (`palisade::netns`).

use std::{
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use nix::{
    sched::{CloneFlags, unshare},
    sys::{prctl::set_pdeathsig, signal::Signal},
};
use palisade::netns::{NetnsError, enter, run_in};

/// A network namespace of its own, made with `unshare(2)` and held by file
/// descriptor (the lab's node, pods and outside, and the tests'): nothing is
/// mounted under /run/netns, so it goes away with its last descriptor or
/// socket, also when its maker is killed.
pub struct Netns {
    file: File,
    /// Shown in errors.
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Result<Self, NetnsError> {
        let file = std::thread::scope(|s| {
            s.spawn(|| {
                // Only this thread, which ends here, changes namespace; the
                // namespace lives on in the descriptor it returns.
                unshare(CloneFlags::CLONE_NEWNET)?;
                File::open("/proc/thread-self/ns/net")
            })
            .join()
            .map_err(|_| io::Error::other("unshare thread panicked"))?
        })
        .map_err(|source| NetnsError::Create {
            name: name.to_owned(),
            source,
        })?;
        Ok(Self {
            file,
            name: name.to_owned(),
        })
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            file: self.file.try_clone()?,
            name: self.name.clone(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// A path that opens this namespace from this process, for [`in_netns`].
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd()))
    }

    /// Makes `cmd` start its child in this namespace (only the network
    /// namespace: mounts stay, so bpffs remains visible), killed when this
    /// process dies.
    pub fn spawn_inside(&self, cmd: &mut Command) -> io::Result<()> {
        let ns = self.file.try_clone()?;
        // SAFETY: between fork and exec the child makes only
        // async-signal-safe calls (setns, prctl) on memory prepared before
        // the fork.
        unsafe {
            cmd.pre_exec(move || {
                enter(&ns)?;
                set_pdeathsig(Signal::SIGKILL)?;
                Ok(())
            });
        }
        Ok(())
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        run_in(&self.file, &self.name, f)
    }

    fn io_error(&self, what: String) -> impl FnOnce(io::Error) -> NetnsError {
        let name = self.name.clone();
        move |source| NetnsError::Io { name, what, source }
    }

    /// A netlink connection inside this namespace, driven by the current
    /// tokio runtime.
    pub fn netlink(&self) -> Result<rtnetlink::Handle, NetnsError> {
        let runtime = tokio::runtime::Handle::current();
        self.run(move || {
            let _entered = runtime.enter();
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            Ok(handle)
        })?
        .map_err(self.io_error("netlink socket".into()))
    }

    /// Writes a sysctl of this namespace (a path under /proc/sys/net).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = Path::new("/proc/sys/net").join(key);
        self.run(|| fs::write(&path, value))?
            .map_err(self.io_error(format!("sysctl {}", path.display())))
    }
}

impl Netns {
    /// One HTTP/1.1 GET from inside this namespace (for endpoints that
    /// listen on its loopback); the body of a 200 response.
    pub fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
        let timeout = std::time::Duration::from_secs(10);
        // All of it on the namespace's own thread, which runs no runtime.
        self.run(move || {
            let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            palisade::observe::client::Body::open(stream, path, Some(timeout))?.text(timeout)
        })?
        .with_context(|| format!("GET {addr}{path}"))
    }
}
