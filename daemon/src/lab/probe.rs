//! One probe from a pod to a target: a TCP connection, a UDP request and its
//! reply, or an SCTP association, made from a socket inside the source pod's
//! namespace. A failing cell is tried once more before it counts as blocked,
//! so one lost packet does not fail a scenario.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use socket2::SockAddr;

use super::serve::{no_sctp, socket};
use crate::model::Protocol;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "observed", content = "detail")]
pub enum Observed {
    Reachable,
    /// With the last attempt's error.
    Blocked(String),
    /// With the reason (e.g. the kernel has no SCTP).
    Skipped(String),
}

const PAYLOAD: &[u8] = b"palisade-lab-probe";

fn attempt(to: SocketAddr, protocol: Protocol, timeout: Duration) -> io::Result<()> {
    let s = socket(&to, protocol)?;
    match protocol {
        Protocol::Tcp | Protocol::Sctp => s.connect_timeout(&SockAddr::from(to), timeout),
        Protocol::Udp => {
            s.connect(&SockAddr::from(to))?;
            s.send(PAYLOAD)?;
            s.set_read_timeout(Some(timeout))?;
            let mut buf = [std::mem::MaybeUninit::new(0u8); 64];
            let n = s.recv(&mut buf).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    io::Error::new(io::ErrorKind::TimedOut, "no reply in time")
                }
                _ => e,
            })?;
            if n == PAYLOAD.len() {
                Ok(())
            } else {
                Err(io::Error::other(format!("reply of {n} bytes")))
            }
        }
    }
}

/// Runs in the source pod's namespace (the caller's thread is there).
pub fn probe(to: SocketAddr, protocol: Protocol, timeout: Duration) -> (Observed, u32) {
    let mut last = String::new();
    for n in 1..=2 {
        let start = Instant::now();
        match attempt(to, protocol, timeout) {
            Ok(()) => return (Observed::Reachable, n),
            Err(e) if protocol == Protocol::Sctp && no_sctp(&e) => {
                return (Observed::Skipped(format!("kernel has no SCTP ({e})")), n);
            }
            Err(e) => {
                last = e.to_string();
                // A refusal comes back at once: let the retry wait out the
                // rest of the timeout first, so a policy change racing the
                // probe is not retried within microseconds.
                if let Some(rest) = timeout.checked_sub(start.elapsed())
                    && n == 1
                    && e.kind() != io::ErrorKind::TimedOut
                    && e.kind() != io::ErrorKind::WouldBlock
                {
                    std::thread::sleep(rest.min(Duration::from_millis(100)));
                }
            }
        }
    }
    (Observed::Blocked(last), 2)
}

/// Opens a connection for a `connect` step (from inside the source pod's
/// namespace) and checks one echo on it.
pub fn hold(to: SocketAddr, protocol: Protocol, timeout: Duration) -> io::Result<socket2::Socket> {
    let s = socket(&to, protocol)?;
    match protocol {
        Protocol::Tcp | Protocol::Sctp => s.connect_timeout(&SockAddr::from(to), timeout)?,
        Protocol::Udp => s.connect(&SockAddr::from(to))?,
    }
    echo(&s, timeout)?;
    Ok(s)
}

/// One request and its reply on a held connection.
pub fn echo(s: &socket2::Socket, timeout: Duration) -> io::Result<()> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.send(PAYLOAD)?;
    let mut buf = [std::mem::MaybeUninit::new(0u8); 64];
    let mut got = 0;
    while got < PAYLOAD.len() {
        let n = s.recv(&mut buf[got..]).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                io::Error::new(io::ErrorKind::TimedOut, "no reply in time")
            }
            _ => e,
        })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed by the peer",
            ));
        }
        got += n;
    }
    Ok(())
}

/// Whether a held connection still carries a request and its reply (two
/// tries, as for probes).
pub fn still_open(s: &socket2::Socket, timeout: Duration) -> Result<(), String> {
    match echo(s, timeout) {
        Ok(()) => Ok(()),
        Err(_) => echo(s, timeout).map_err(|e| e.to_string()),
    }
}
