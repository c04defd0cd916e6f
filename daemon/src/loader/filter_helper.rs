//! The filter helper: a child process that keeps `CAP_NET_ADMIN` so that
//! the daemon need not.
//!
//! Why: on a kernel with TCX a new veth's two TCX links each wait for an
//! RCU grace period under the routing lock (about 24 ms a veth here), and
//! a new pod waits for them; a clsact qdisc and two filters take 0.1 ms.
//! Filters need `CAP_NET_ADMIN` (rtnetlink checks it on every request but
//! a dump), which the daemon drops once started. The helper is started before the
//! drop, lowers itself to `CAP_NET_ADMIN` alone, and does two things on
//! the daemon's request over a socket pair: put one of Palisade's two TC
//! programs (the descriptors it was started with) into a clsact filter at
//! Palisade's own priority and handle on an interface, or take that
//! filter off. Nothing else: a daemon taken over could at most move
//! Palisade's own programs on or off an interface, where with the
//! capability it could reconfigure the node's network. Nor can it take
//! the helper over: tracing a process, or writing its memory, that holds
//! a capability the caller lacks takes `CAP_SYS_PTRACE`
//! (`cap_ptrace_access_check`), which no part of Palisade holds.
//!
//! It runs this same binary (`/proc/self/exe`, the image the daemon runs
//! even after an upgrade replaced the file), in the daemon's network
//! namespace, and exits when the daemon's end of the socket closes. A
//! helper that stops answering is killed and not restarted: the daemon
//! then gives new veths TCX links, as it would without one.

use std::{
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::process::CommandExt as _,
    },
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rtnetlink::{
    packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage,
        NetlinkPayload,
    },
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

use super::attach::{self, CLSACT_HANDLE, CLSACT_PRIORITY, TcHook};

/// `argv[1]` of the helper.
pub const HELPER_ARG: &str = "--palisade-tc-filter-helper";

/// The helper's descriptors: its end of the socket pair, then the
/// programs in [`TcHook::ALL`]'s order.
const SOCKET_FD: RawFd = 3;
const PROGRAM_FDS: [RawFd; 2] = [4, 5];

const ATTACH: u8 = 1;
const DETACH: u8 = 2;

/// How long the daemon waits for an answer: a request is one or two
/// netlink round trips, well under a millisecond unless the routing lock
/// is held (a TCX link's grace period: tens of milliseconds; a burst of
/// interfaces deleted: more). A pass waits that long at most, once.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A request: operation, hook (its index in [`TcHook::ALL`]), two bytes
/// of padding, the interface index (native order: both ends are this
/// binary on this machine).
type Request = [u8; 8];
/// An answer: errno (0 for success), then a flag (attach: the filter was
/// there and its program replaced; detach: there was a filter).
type Answer = [u8; 8];

/// The daemon's end: a running helper.
pub struct FilterHelper {
    socket: Mutex<OwnedFd>,
    child: Mutex<Child>,
    pid: u32,
    /// Stopped answering, or answered garbage: killed, not asked again.
    broken: AtomicBool,
}

impl FilterHelper {
    /// Starts the helper with the two TC programs' descriptors (in
    /// [`TcHook::ALL`]'s order), in the calling thread's network
    /// namespace. Call it before the daemon drops its capabilities: the
    /// helper starts with what an exec gives the daemon then (under the
    /// runtime's no_new_privs, at most what it held; run as plain root,
    /// its bounding set) and lowers itself to `CAP_NET_ADMIN`.
    pub fn spawn(programs: [OwnedFd; 2]) -> io::Result<Self> {
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )?;
        let timeout = libc::timeval {
            tv_sec: ANSWER_WITHIN.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: a valid descriptor, and a timeval of the size given.
            let rc = unsafe {
                libc::setsockopt(
                    ours.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&raw const timeout).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let sources = [
            theirs.as_raw_fd(),
            programs[0].as_raw_fd(),
            programs[1].as_raw_fd(),
        ];
        let mut command = Command::new("/proc/self/exe");
        // A group of its own: a terminal's Ctrl-C or a signal to the
        // daemon's group reaches the daemon, whose exit ends the helper.
        command
            .arg(HELPER_ARG)
            .process_group(0)
            .stdin(Stdio::null())
            .env_clear()
            .env(
                "PALISADE_LOG",
                std::env::var("PALISADE_LOG").unwrap_or_default(),
            );
        // SAFETY: between fork and exec only fcntl and dup2 run, both
        // async-signal-safe, on descriptors this process owns.
        unsafe {
            command.pre_exec(move || {
                // Out of the way of 3..=5 first, so that no source is
                // overwritten by an earlier target.
                let mut high = [0; 3];
                for (h, &fd) in high.iter_mut().zip(&sources) {
                    *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 16);
                    if *h < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // dup2 leaves the new descriptors open across exec.
                for (&from, to) in high.iter().zip(SOCKET_FD..) {
                    if libc::dup2(from, to) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(theirs);
        Ok(Self {
            pid: child.id(),
            socket: Mutex::new(ours),
            child: Mutex::new(child),
            broken: AtomicBool::new(false),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the helper is still there to answer. Reaps one that was
    /// killed or exited on its own (the latter then counts as broken).
    pub fn working(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(child.try_wait(), Ok(Some(_))) && !self.broken.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                pid = self.pid,
                "the TC filter helper exited: new veths get TCX links from now on"
            );
        }
        !self.broken.load(Ordering::Relaxed)
    }

    /// Puts `hook`'s program into Palisade's clsact filter on `ifindex`
    /// (the qdisc added if missing); whether the filter was there already
    /// (its program replaced in place).
    pub fn attach(&self, ifindex: u32, hook: TcHook) -> Result<bool, String> {
        self.ask(ATTACH, ifindex, hook)
    }

    /// Takes Palisade's clsact filter of `hook` off `ifindex`; whether
    /// there was one.
    pub fn detach(&self, ifindex: u32, hook: TcHook) -> Result<bool, String> {
        self.ask(DETACH, ifindex, hook)
    }

    fn ask(&self, op: u8, ifindex: u32, hook: TcHook) -> Result<bool, String> {
        let what = if op == ATTACH {
            "attaching"
        } else {
            "detaching"
        };
        let fail = |e: String| format!("{what} a clsact filter on ifindex {ifindex}: {e}");
        let stopped = || fail("the filter helper has stopped".into());
        if !self.working() {
            return Err(stopped());
        }
        let mut request: Request = [0; 8];
        request[0] = op;
        request[1] = hook_index(hook);
        request[4..].copy_from_slice(&ifindex.to_ne_bytes());
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock: a caller that waited for it behind
        // a failed exchange must not send.
        if self.broken.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let answer = exchange(socket.as_fd(), &request);
        if answer.is_err() {
            // Before the lock goes: no later request may read the answer
            // this one gave up on.
            self.broken.store(true, Ordering::Relaxed);
            let _ =
                nix::sys::socket::shutdown(socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
        drop(socket);
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.kill();
                return Err(fail(format!(
                    "the filter helper (pid {}) failed: {e}",
                    self.pid
                )));
            }
        };
        let errno = i32::from_ne_bytes([answer[0], answer[1], answer[2], answer[3]]);
        if errno != 0 {
            return Err(fail(io::Error::from_raw_os_error(errno).to_string()));
        }
        Ok(answer[4] != 0)
    }

    /// Kills the helper, already marked broken. Not waited for here: one
    /// stuck on the routing lock dies only once the lock is free
    /// ([`Self::working`] reaps it).
    fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        tracing::warn!(
            pid = self.pid,
            "the TC filter helper stopped: new veths get TCX links from now on"
        );
    }
}

impl Drop for FilterHelper {
    fn drop(&mut self) {
        // Our end closed would end it too, once it reads; this is sooner.
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn hook_index(hook: TcHook) -> u8 {
    match hook {
        TcHook::FromPod => 0,
        TcHook::ToPod => 1,
    }
}

/// One request out, its answer back.
fn exchange(socket: BorrowedFd<'_>, request: &Request) -> io::Result<Answer> {
    use nix::sys::socket::{MsgFlags, recv, send};
    // With a socket timeout set, the kernel does not restart these after
    // a signal: they are tried again.
    let sent = loop {
        match send(socket.as_raw_fd(), request, MsgFlags::MSG_NOSIGNAL) {
            Err(nix::errno::Errno::EINTR) => {}
            other => break other?,
        }
    };
    if sent != request.len() {
        return Err(io::Error::other("request cut short"));
    }
    let mut answer: Answer = [0; 8];
    let read = loop {
        match recv(socket.as_raw_fd(), &mut answer, MsgFlags::empty()) {
            Err(nix::errno::Errno::EINTR) => {}
            other => break other?,
        }
    };
    match read {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        8 => Ok(answer),
        n => Err(io::Error::other(format!("an answer of {n} bytes"))),
    }
}

/// The helper's entry: `None` unless `argv[1]` is [`HELPER_ARG`], else the
/// exit status. Call it first thing in `main`.
pub fn main() -> Option<u8> {
    if std::env::args_os().nth(1)? != HELPER_ARG {
        return None;
    }
    Some(serve())
}

fn serve() -> u8 {
    let fail = |what: &str| {
        eprintln!("palisade TC filter helper: {what}");
        1
    };
    // Only a process the daemon started has these; check before owning.
    for fd in std::iter::once(SOCKET_FD).chain(PROGRAM_FDS) {
        // SAFETY: fcntl(F_GETFD) on any number is harmless.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return fail(&format!("descriptor {fd} is not open: started by hand?"));
        }
    }
    // SAFETY: open (checked above), handed to this process by the daemon
    // for it alone, and owned by nothing else here.
    let (socket, programs) = unsafe {
        (
            OwnedFd::from_raw_fd(SOCKET_FD),
            PROGRAM_FDS.map(|fd| OwnedFd::from_raw_fd(fd)),
        )
    };
    let caps = crate::node::capabilities::drop_for_filter_helper();
    if !caps.kept.iter().any(|c| c == "NET_ADMIN") {
        return fail(&format!("CAP_NET_ADMIN is not held: {:?}", caps.notes));
    }
    loop {
        let mut request: Request = [0; 8];
        let read = match nix::sys::socket::recv(
            socket.as_raw_fd(),
            &mut request,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            // The daemon is gone.
            Ok(0) => return 0,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return fail(&format!("reading a request: {e}")),
        };
        let (errno, flag) = if read == request.len() {
            match handle(&request, &programs) {
                Ok(flag) => (0, flag),
                Err(errno) => (errno, false),
            }
        } else {
            (libc::EINVAL, false)
        };
        let mut answer: Answer = [0; 8];
        answer[..4].copy_from_slice(&errno.to_ne_bytes());
        answer[4] = u8::from(flag);
        if let Err(e) = nix::sys::socket::send(
            socket.as_raw_fd(),
            &answer,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        ) {
            return fail(&format!("answering: {e}"));
        }
    }
}

/// One request carried out: the flag, or an errno.
fn handle(request: &Request, programs: &[OwnedFd; 2]) -> Result<bool, i32> {
    let hook = match request[1] {
        0 => TcHook::FromPod,
        1 => TcHook::ToPod,
        _ => return Err(libc::EINVAL),
    };
    let ifindex = u32::from_ne_bytes([request[4], request[5], request[6], request[7]]);
    match request[0] {
        ATTACH => {
            add_clsact(ifindex)?;
            let program = &programs[usize::from(hook_index(hook))];
            add_filter(ifindex, hook, program.as_fd())
        }
        DETACH => attach::detach_clsact_hook(ifindex, hook).map_err(|e| errno_of(&e)),
        _ => Err(libc::EINVAL),
    }
}

fn add_clsact(ifindex: u32) -> Result<(), i32> {
    attach::add_clsact(ifindex).map_err(|e| match e {
        aya::programs::tc::TcError::NetlinkError(e) => e.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    })
}

fn errno_of(e: &attach::AttachError) -> i32 {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>()
            && let Some(errno) = io.raw_os_error()
        {
            return errno;
        }
        source = s.source();
    }
    libc::EIO
}

/// The filter Palisade's loader makes (`attach::attach_clsact`): priority
/// [`CLSACT_PRIORITY`], handle [`CLSACT_HANDLE`], every protocol,
/// direct action, named after the program. Created if missing; else its
/// program is replaced in place (no moment without one). Whether it was
/// there.
fn add_filter(ifindex: u32, hook: TcHook, program: BorrowedFd<'_>) -> Result<bool, i32> {
    match filter_request(ifindex, hook, program, NLM_F_CREATE | NLM_F_EXCL) {
        Err(libc::EEXIST) => filter_request(ifindex, hook, program, NLM_F_CREATE).map(|()| true),
        other => other.map(|()| false),
    }
}

fn filter_request(
    ifindex: u32,
    hook: TcHook,
    program: BorrowedFd<'_>,
    flags: u16,
) -> Result<(), i32> {
    let mut message = TcMessage::default();
    message.header.index = i32::try_from(ifindex).map_err(|_| libc::EINVAL)?;
    message.header.handle = TcHandle::from(CLSACT_HANDLE);
    message.header.parent = TcHandle::from(parent(hook));
    // The priority above, and every protocol (ETH_P_ALL, network order).
    message.header.info = u32::from(CLSACT_PRIORITY) << 16 | u32::from(0x0003u16.to_be());
    let fd = u32::try_from(program.as_raw_fd()).map_err(|_| libc::EBADF)?;
    message.attributes = vec![
        TcAttribute::Kind("bpf".into()),
        TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(hook.program().into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]),
    ];
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewTrafficFilter(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    round_trip(request, |_| {})
}

/// Whether Palisade's clsact filter of `hook` is on `ifindex`: a dump,
/// which needs no capability (what the daemon asks before it reports a
/// filter it cannot remove).
pub fn filter_present(ifindex: u32, hook: TcHook) -> Result<bool, i32> {
    let mut message = TcMessage::default();
    message.header.index = i32::try_from(ifindex).map_err(|_| libc::EINVAL)?;
    message.header.parent = TcHandle::from(parent(hook));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut found = false;
    let outcome = round_trip(request, |m| {
        if let RouteNetlinkMessage::NewTrafficFilter(f) = m {
            found |= attach::is_palisade_filter(f.header.handle.into(), f.header.info);
        }
    });
    // A missing interface or qdisc dumps nothing; older kernels refused
    // such a dump instead, which means no filter all the same.
    match outcome {
        Ok(()) => Ok(found),
        Err(libc::EINVAL | libc::ENODEV | libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS or TC_H_MIN_EGRESS).
fn parent(hook: TcHook) -> u32 {
    match hook {
        TcHook::FromPod => 0xFFFF_FFF2,
        TcHook::ToPod => 0xFFFF_FFF3,
    }
}

/// Sends `request` on a socket of its own and reads until its
/// acknowledgement, error or end of dump, handing every other message to
/// `each`.
fn round_trip(
    mut request: NetlinkMessage<RouteNetlinkMessage>,
    mut each: impl FnMut(RouteNetlinkMessage),
) -> Result<(), i32> {
    request.header.sequence_number = 1;
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);

    let map_io = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(map_io)?;
    socket.bind_auto().map_err(map_io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(map_io)?;
    socket.send(&bytes, 0).map_err(map_io)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut into = &mut buf[..];
        let read = socket.recv(&mut into, 0).map_err(map_io)?;
        let mut offset = 0;
        while offset < read {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..read])
                .map_err(|_| libc::EIO)?;
            let length = message.header.length as usize;
            match message.payload {
                // An error with no code is the acknowledgement.
                NetlinkPayload::Error(e) => {
                    return match e.code {
                        None => Ok(()),
                        Some(code) => Err(-code.get()),
                    };
                }
                // A dump's own error comes in its end.
                NetlinkPayload::Done(d) if d.code != 0 => return Err(-d.code),
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::InnerMessage(m) => each(m),
                _ => {}
            }
            if length == 0 {
                return Err(libc::EIO);
            }
            offset += length.next_multiple_of(4);
        }
    }
}
