//! One probe from a pod to a target: a TCP connection, a UDP request and its
//! reply, or an SCTP association, made from a socket inside the source pod's
//! namespace. A failing cell is tried once more before it counts, so one lost
//! packet does not fail a scenario.
//!
//! Only silence is "blocked": an enforcer that drops a packet sends nothing
//! back. A refusal (a reset, an ICMP port unreachable, an SCTP abort) means
//! the probe got through to a port where nothing listens; any other error
//! (an ICMP host or network unreachable, no route) means something else
//! stood in the way. Each is its own outcome, never a block.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use socket2::SockAddr;

use palisade::model::Protocol;

use crate::serve::{no_sctp, socket};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "observed", content = "detail")]
pub enum Observed {
    Reachable,
    /// No answer within the timeout on the last attempt (with its error).
    Blocked(String),
    /// The target refused (with the error the socket reported).
    Refused(String),
    /// Any other error: neither an answer nor silence.
    Error(String),
    /// With the reason (e.g. the kernel has no SCTP).
    Skipped(String),
}

impl Observed {
    /// What a failed attempt's error says about the path.
    pub fn of_error(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Self::Blocked(e.to_string()),
            io::ErrorKind::ConnectionRefused => Self::Refused(e.to_string()),
            _ => Self::Error(e.to_string()),
        }
    }
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
    let mut last = Observed::Blocked(String::new());
    for n in 1..=2 {
        let start = Instant::now();
        match attempt(to, protocol, timeout) {
            Ok(()) => return (Observed::Reachable, n),
            Err(e) if protocol == Protocol::Sctp && no_sctp(&e) => {
                return (Observed::Skipped(format!("kernel has no SCTP ({e})")), n);
            }
            Err(e) => {
                last = Observed::of_error(&e);
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
    (last, 2)
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

/// Whether a held connection still carries a request and its reply. Only
/// silence is tried again (as for probes): after a reset or another error
/// the connection is gone, and a second try would only report its ghost.
pub fn still_open(s: &socket2::Socket, timeout: Duration) -> io::Result<()> {
    match echo(s, timeout) {
        Err(e) if matches!(Observed::of_error(&e), Observed::Blocked(_)) => echo(s, timeout),
        done => done,
    }
}

/// What a held connection's failed request says, as a report's word for
/// it. Palisade cuts a flow by dropping its packets, so only silence is
/// `cut`; a reset, a refusal or any other error is something else.
pub fn held_state(e: &io::Error) -> &'static str {
    match Observed::of_error(e) {
        Observed::Blocked(_) => "cut",
        Observed::Refused(_) => "refused",
        _ if e.kind() == io::ErrorKind::ConnectionReset => "reset",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_silence_counts_as_blocked() {
        let of = |e: io::Error| Observed::of_error(&e);
        assert!(matches!(
            of(io::Error::new(io::ErrorKind::TimedOut, "no reply in time")),
            Observed::Blocked(_)
        ));
        assert!(matches!(
            of(io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            Observed::Refused(_)
        ));
        for errno in [libc::EHOSTUNREACH, libc::ENETUNREACH, libc::EPERM] {
            assert!(
                matches!(of(io::Error::from_raw_os_error(errno)), Observed::Error(_)),
                "{errno}"
            );
        }
    }

    #[test]
    fn only_silence_cuts_a_held_connection() {
        let state = |e: io::Error| held_state(&e);
        assert_eq!(
            state(io::Error::new(io::ErrorKind::TimedOut, "no reply in time")),
            "cut"
        );
        assert_eq!(
            state(io::Error::from_raw_os_error(libc::ECONNRESET)),
            "reset"
        );
        assert_eq!(
            state(io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            "refused"
        );
        assert_eq!(state(io::Error::from_raw_os_error(libc::EPIPE)), "error");
    }
}
