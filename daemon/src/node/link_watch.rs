//! The node's links as the kernel's link notifications tell them, kept
//! between passes: what wakes a pass when a pod's veth appears, and what a
//! pass reads of the links instead of dumping them.
//!
//! Why keep them: the kernel answers a link dump under its routing lock
//! (RTNL), which a CNI takes again and again while it makes a pod's
//! network. A pass woken by the new veth waited 18-32 ms for its dump (the
//! churn bench's daemon log, `locate` of a link event's pass), about the
//! time the CNI took; 2-3 ms otherwise.
//!
//! Why a view kept so is as current as a dump: the kernel queues a link's
//! notification on every subscribed socket as part of the change, under
//! that lock. So once the socket reads empty, every change made before is
//! in the view. The view starts from a dump made after the subscription (a
//! pass's own, [`LinkWatch::seed`]) with every notification queued since
//! laid over it in order: a notification older than the dump tells of a
//! state the dump already has, or one a later notification replaces, so
//! the view ends where the kernel is. A notification lost (the socket's
//! buffer overran: `ENOBUFS`) leaves the view unknown until the next dump
//! seeds it again; the pass after it dumps.

use std::io;

use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};
use tokio::io::{Interest, unix::AsyncFd};

use super::discover::{LinkShapes, Links};

/// A subscription to this network namespace's link notifications.
pub struct LinkWatch {
    /// Receive errors since the last datagram: a socket error is reported
    /// once, so errors in a row mean the socket itself is broken.
    errors_in_a_row: u32,
    socket: AsyncFd<Socket>,
    shapes: LinkShapes,
    /// Whether `shapes` holds every link (seeded, nothing lost since).
    seeded: bool,
    /// A link new, gone or reshaped (see [`LinkShapes`]) since the last
    /// [`Self::take_changed`].
    changed: bool,
    /// `shapes` shared, until it changes.
    shared: Option<Links>,
    buf: Vec<u8>,
}

/// Larger than any one link's notification: a link's statistics and
/// per-family settings are a few kilobytes.
const DATAGRAM: usize = 64 * 1024;

/// The socket's receive buffer: the socket is read only between passes,
/// and a CNI making a burst of pods sends a few notifications of a few
/// kilobytes each per pod. The kernel's default (`rmem_default`, about
/// 208 KiB) holds some dozens of them; an overrun costs a dump.
pub const RECEIVE_BUFFER: usize = 4 << 20;

/// Receive errors in a row after which the watch gives up.
const ERRORS_IN_A_ROW: u32 = 8;

impl LinkWatch {
    /// Subscribes in the calling thread's network namespace, with a
    /// receive buffer of [`RECEIVE_BUFFER`] (past `rmem_max` only with
    /// `CAP_NET_ADMIN`, so before the daemon drops it); must run inside a
    /// tokio runtime.
    pub fn new() -> io::Result<Self> {
        Self::with_receive_buffer(RECEIVE_BUFFER)
    }

    /// With the socket's receive buffer set to `bytes` (the kernel doubles
    /// it, and keeps a floor): small, a burst of notifications overruns
    /// it, which the tests use.
    #[doc(hidden)]
    pub fn with_receive_buffer(bytes: usize) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        if force_receive_buffer(&socket, bytes).is_err() {
            // Without CAP_NET_ADMIN: as much as `rmem_max` allows.
            socket.set_rx_buf_sz(bytes)?;
        }
        socket.bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))?;
        socket.set_non_blocking(true)?;
        // SAFETY: the socket owns its descriptor, closes it only when
        // dropped, and names no other for its life.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(Self {
            errors_in_a_row: 0,
            socket,
            shapes: LinkShapes::default(),
            seeded: false,
            changed: false,
            shared: None,
            buf: vec![0; DATAGRAM],
        })
    }

    /// Waits until a link came, went or changed its shape. Cancel-safe:
    /// what was read stays read.
    pub async fn changes(&mut self) -> io::Result<()> {
        loop {
            self.drain()?;
            if self.changed {
                return Ok(());
            }
            // Cleared before the socket is read empty again: anything
            // queued after that read makes it ready anew.
            self.socket.readable().await?.clear_ready();
        }
    }

    /// Reads every notification queued, without waiting. An error the
    /// kernel set on the socket (`ENOBUFS` for an overrun, or one it met
    /// building a notification; each reported once) means notifications
    /// were lost: the view is unknown until the next dump. Only a socket
    /// that keeps failing ends the watch.
    pub fn drain(&mut self) -> io::Result<()> {
        loop {
            let mut into = &mut self.buf[..];
            let read = self.socket.get_ref().recv_from(&mut into, libc::MSG_TRUNC);
            match read {
                Ok((n, from)) => {
                    self.errors_in_a_row = 0;
                    // Only the kernel's: a process may send to this
                    // socket too.
                    if from.port_number() != 0 {
                        continue;
                    }
                    if n > DATAGRAM {
                        self.lost();
                    } else {
                        self.note_datagram(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The kernel reports a socket error before the datagrams
                // still queued, which are older than what was lost: they
                // are read too, so that none is laid over the next dump.
                Err(e) => {
                    self.errors_in_a_row += 1;
                    if self.errors_in_a_row >= ERRORS_IN_A_ROW {
                        return Err(e);
                    }
                    tracing::debug!("link notifications lost ({e}): the next pass dumps the links");
                    self.lost();
                }
            }
        }
    }

    fn note_datagram(&mut self, len: usize) {
        let mut at = 0;
        while at < len {
            let Ok(message) =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..len])
            else {
                return self.lost();
            };
            let size = message.header.length as usize;
            if let NetlinkPayload::InnerMessage(m) = &message.payload
                && self.shapes.note(m)
            {
                self.changed = true;
                self.shared = None;
            }
            if size == 0 {
                break;
            }
            // Netlink messages are 4-byte aligned.
            at += size.next_multiple_of(4);
        }
    }

    fn lost(&mut self) {
        self.seeded = false;
        self.shapes.clear();
        self.shared = None;
        self.changed = true;
    }

    /// Whether a link came, went or changed shape since the last call; the
    /// next pass must look at the links again if so.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every link, as current as a dump made now, once the queued
    /// notifications are read ([`Self::drain`]); `None` until seeded, or
    /// after notifications were lost.
    pub fn current(&mut self) -> Option<Links> {
        if !self.seeded {
            return None;
        }
        Some(
            self.shared
                .get_or_insert_with(|| self.shapes.to_links())
                .clone(),
        )
    }

    /// Takes `dump` for every link. It must have been made after this
    /// watch subscribed, and before the notifications still unread were
    /// read: those are laid over it as they come.
    pub fn seed(&mut self, dump: &Links) {
        self.shapes.replace(dump);
        self.shared = Some(dump.clone());
        self.seeded = true;
    }
}

/// `SO_RCVBUFFORCE`: a receive buffer past `rmem_max`, for a process with
/// `CAP_NET_ADMIN`.
fn force_receive_buffer(socket: &Socket, bytes: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the socket's own, and the option's value is
    // a c_int of the size given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
