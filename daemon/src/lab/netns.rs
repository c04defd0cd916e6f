//! Network namespaces the lab owns, made with `unshare(2)` and held by file
//! descriptor: nothing is mounted under /run/netns, so a namespace goes away
//! with its last descriptor or socket, also when the runner is killed.

use std::{
    fs::{self, File},
    io,
    os::fd::{AsRawFd as _, RawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use futures_util::TryStreamExt as _;
use rtnetlink::{Handle, LinkUnspec};

use crate::netns::in_netns;

pub struct Netns {
    file: File,
    /// Shown in errors.
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let file = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare changes only this thread, which ends here;
                // the namespace lives on in the descriptor it returns.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                File::open("/proc/thread-self/ns/net")
            })
            .join()
            .map_err(|_| io::Error::other("unshare thread panicked"))?
        })
        .with_context(|| format!("creating network namespace {name}"))?;
        Ok(Self {
            file,
            name: name.to_owned(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// A path that opens this namespace, for [`in_netns`].
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd()))
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_netns(&self.path(), f).with_context(|| format!("in namespace {}", self.name))
    }

    /// A netlink connection inside this namespace, driven by the current
    /// tokio runtime.
    pub fn netlink(&self) -> anyhow::Result<Handle> {
        let runtime = tokio::runtime::Handle::current();
        self.run(move || {
            let _entered = runtime.enter();
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            Ok::<_, io::Error>(handle)
        })?
        .context("netlink socket")
    }

    /// Writes a sysctl of this namespace (a path under /proc/sys/net).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = Path::new("/proc/sys/net").join(key);
        self.run(|| fs::write(&path, value))?
            .with_context(|| format!("sysctl {} in {}", path.display(), self.name))
    }
}

impl Netns {
    /// One HTTP/1.1 GET from inside this namespace (for endpoints that
    /// listen on its loopback); the body of a 200 response.
    pub fn http_get(&self, addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        let request = format!("GET {path} HTTP/1.1\r\nHost: palisade\r\nConnection: close\r\n\r\n");
        let response = self.run(move || -> io::Result<String> {
            let timeout = std::time::Duration::from_secs(10);
            let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.write_all(request.as_bytes())?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })??;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("no HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") {
            anyhow::bail!(
                "GET {addr}{path}: {}",
                head.lines().next().unwrap_or_default()
            );
        }
        Ok(body.to_owned())
    }
}

pub async fn index_of(handle: &Handle, name: &str) -> anyhow::Result<u32> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    let link = links
        .try_next()
        .await
        .with_context(|| format!("looking up link {name}"))?
        .ok_or_else(|| anyhow!("no link {name}"))?;
    Ok(link.header.index)
}

pub async fn set_up(handle: &Handle, index: u32) -> anyhow::Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("setting link {index} up"))
}
