//! Attaches programs to interfaces and hooks, pinning each link.
//!
//! A pinned link keeps its program attached after the daemon exits. When a
//! pin already exists (a previous daemon made it), the new program replaces
//! the old one inside that same link, atomically: there is no moment with no
//! program attached.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    Link as _, Lsm, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, LinkError, LinkOrder, PinnedLink},
    tc::{NlOptions, SchedClassifierLink, TcAttach, TcError, TcHandle, qdisc_add_clsact},
    xdp::XdpLink,
};
use ebpf_common::maps::programs;

use super::{LoadedObject, objects};

use crate::paths::PinDir;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("program {0} is not in the loaded object")]
    MissingProgram(&'static str),
    #[error("attaching {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("adopting pinned link {path}: {source}")]
    Adopt {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("link of {program} cannot be pinned: {source}")]
    NotPinnable {
        program: &'static str,
        #[source]
        source: LinkError,
    },
    #[error("pinning link at {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error(transparent)]
    Interface(io::Error),
    #[error("on {iface}: {source}")]
    On {
        iface: String,
        #[source]
        source: Box<AttachError>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which side of a pod's host veth a TC program guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    /// The veth's receive side: packets the pod sends (its egress policy).
    FromPod,
    /// The veth's transmit side: packets sent to the pod (its ingress policy).
    ToPod,
}

impl TcHook {
    pub const ALL: [Self; 2] = [Self::FromPod, Self::ToPod];

    pub(crate) fn program(self) -> &'static str {
        match self {
            Self::FromPod => programs::TC_FROM_POD,
            Self::ToPod => programs::TC_TO_POD,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Self::FromPod => TcAttachType::Ingress,
            Self::ToPod => TcAttachType::Egress,
        }
    }

    fn pin_name(self, ifindex: u32) -> String {
        match self {
            Self::FromPod => format!("tc-from-pod-{ifindex}"),
            Self::ToPod => format!("tc-to-pod-{ifindex}"),
        }
    }
}

/// Where an attachment lives now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Pinned at `path`; `replaced` when an existing link was taken over.
    Pinned { path: PathBuf, replaced: bool },
    /// A clsact filter (kernels without TCX): not pinnable, but kept by the
    /// qdisc after this process exits; `replaced` as for a pinned link.
    Filter { replaced: bool },
}

fn attach_error(program: &'static str) -> impl FnOnce(ProgramError) -> AttachError {
    move |e| AttachError::Program {
        program,
        source: Box::new(e),
    }
}

fn pin(link: FdLink, path: &Path, replaced: bool) -> Result<LinkState, AttachError> {
    link.pin(path).map_err(|e| AttachError::Pin {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    Ok(LinkState::Pinned {
        path: path.to_path_buf(),
        replaced,
    })
}

/// Takes a pinned link over: the pin file goes, the link stays alive through
/// the returned fd until it is pinned again. A link pinned by a daemon of an
/// older ABI is taken over too: links carry no map layout, and adopting them
/// is what moves an attachment to the new programs without a gap.
fn adopt(pins: &PinDir, name: &str) -> Result<Option<FdLink>, AttachError> {
    let Some(path) = pinned_link(pins, name) else {
        return Ok(None);
    };
    let pinned = PinnedLink::from_pin(&path).map_err(|source| AttachError::Adopt {
        path: path.clone(),
        source,
    })?;
    let link = pinned
        .unpin()
        .map_err(|source| AttachError::Io { path, source })?;
    Ok(Some(link))
}

/// Removes the pin directories of other ABI versions whose links have all
/// been adopted; their maps are then referenced by nothing Palisade runs.
/// A directory that still holds links is left alone.
pub fn retire_other_abis(pins: &PinDir) -> Result<Vec<PathBuf>, AttachError> {
    let mut retired = Vec::new();
    for old in pins.other_abis() {
        let links_left = fs::read_dir(old.links()).map(|d| d.count()).unwrap_or(0);
        if links_left > 0 {
            tracing::info!(dir = %old.root().display(), links_left, "older ABI still has links");
            continue;
        }
        fs::remove_dir_all(old.root()).map_err(|source| AttachError::Io {
            path: old.root().to_path_buf(),
            source,
        })?;
        retired.push(old.root().to_path_buf());
    }
    Ok(retired)
}

/// What attaching through a pinned, updatable link needs of a program type.
trait LinkedProgram {
    type Link: TryFrom<FdLink, Error = LinkError>;
    type Id;
    /// Swaps this program into an existing link (`bpf_link_update`).
    fn replace_in(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError>;
    fn take(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError>;
    /// Whether the verifier has passed it (the daemon leaves out programs
    /// it does not mean to attach).
    fn loaded(&self) -> bool;
}

impl LinkedProgram for Xdp {
    type Link = XdpLink;
    type Id = aya::programs::xdp::XdpLinkId;
    fn replace_in(&mut self, link: XdpLink) -> Result<Self::Id, ProgramError> {
        self.attach_to_link(link)
    }
    fn take(&mut self, id: Self::Id) -> Result<XdpLink, ProgramError> {
        self.take_link(id)
    }
    fn loaded(&self) -> bool {
        self.fd().is_ok()
    }
}

impl LinkedProgram for SchedClassifier {
    type Link = SchedClassifierLink;
    type Id = aya::programs::tc::SchedClassifierLinkId;
    fn replace_in(&mut self, link: SchedClassifierLink) -> Result<Self::Id, ProgramError> {
        self.attach_to_link(link)
    }
    fn take(&mut self, id: Self::Id) -> Result<SchedClassifierLink, ProgramError> {
        self.take_link(id)
    }
    fn loaded(&self) -> bool {
        self.fd().is_ok()
    }
}

/// Adopts the link pinned as `pin_name` (from this or an older ABI) and swaps
/// `prog` into it, or attaches afresh with `attach`; then pins the link.
fn attach_pinned<P: LinkedProgram>(
    prog: &mut P,
    name: &'static str,
    pins: &PinDir,
    pin_name: &str,
    attach: impl FnOnce(&mut P) -> Result<P::Id, ProgramError>,
) -> Result<LinkState, AttachError>
where
    FdLink: TryFrom<P::Link, Error = LinkError>,
{
    let path = pins.link(pin_name);
    // Before the pinned link is taken over: a program that cannot replace
    // it must leave it attached.
    if !prog.loaded() {
        return Err(attach_error(name)(ProgramError::NotLoaded));
    }
    let (id, replaced) = match adopt(pins, pin_name)? {
        Some(link) => {
            let link = P::Link::try_from(link).map_err(|source| AttachError::Adopt {
                path: path.clone(),
                source,
            })?;
            (prog.replace_in(link).map_err(attach_error(name))?, true)
        }
        None => (attach(prog).map_err(attach_error(name))?, false),
    };
    let link = prog.take(id).map_err(attach_error(name))?;
    let link = FdLink::try_from(link).map_err(|source| AttachError::NotPinnable {
        program: name,
        source,
    })?;
    pin(link, &path, replaced)
}

/// Attaches the XDP prefilter to `ifindex` (in the calling thread's network
/// namespace) and pins the link as `links/xdp-<ifindex>`.
pub fn attach_xdp(
    object: &mut LoadedObject,
    pins: &PinDir,
    ifindex: u32,
    mode: XdpMode,
) -> Result<LinkState, AttachError> {
    attach_xdp_program(
        object,
        pins,
        programs::XDP_PREFILTER,
        &format!("xdp-{ifindex}"),
        ifindex,
        mode,
    )
}

/// Attaches the optional XDP pod-egress program to a pod's host-side veth
/// (instead of `pal_tc_from_pod`), pinned as `links/xdp-from-pod-<ifindex>`.
pub fn attach_xdp_from_pod(
    object: &mut LoadedObject,
    pins: &PinDir,
    ifindex: u32,
    mode: XdpMode,
) -> Result<LinkState, AttachError> {
    let pin_name = format!("xdp-from-pod-{ifindex}");
    attach_xdp_program(
        object,
        pins,
        programs::XDP_FROM_POD,
        &pin_name,
        ifindex,
        mode,
    )
}

fn attach_xdp_program(
    object: &mut LoadedObject,
    pins: &PinDir,
    name: &'static str,
    pin_name: &str,
    ifindex: u32,
    mode: XdpMode,
) -> Result<LinkState, AttachError> {
    let prog: &mut Xdp = program(object, name)?;
    attach_pinned(prog, name, pins, pin_name, |p| p.attach(ifindex, mode))
}

/// Attaches a TC program to `ifindex` (in the calling thread's network
/// namespace). With TCX the link is pinned as `links/tc-{from,to}-pod-<ifindex>`.
/// Without TCX the program goes into a clsact filter at Palisade's own
/// priority and handle, which the qdisc keeps after this process exits and
/// which the next loader replaces in place.
pub fn attach_tc(
    object: &mut LoadedObject,
    pins: &PinDir,
    ifindex: u32,
    hook: TcHook,
    tcx: bool,
) -> Result<LinkState, AttachError> {
    let name = hook.program();
    let prog: &mut SchedClassifier = program(object, name)?;
    if !tcx {
        return attach_clsact(prog, name, ifindex, hook);
    }
    attach_pinned(prog, name, pins, &hook.pin_name(ifindex), |p| {
        p.attach(
            ifindex,
            TcAttach::Tcx {
                attach_type: hook.attach_type(),
                order: LinkOrder::default(),
            },
        )
    })
}

/// Palisade's clsact filters sit at priority 1 (before any other filter) with
/// a handle of their own, so they are found again without a registry and
/// never confused with another tool's filter at the same priority.
pub const CLSACT_PRIORITY: u16 = 1;
pub const CLSACT_HANDLE: u32 = 0x5041;

/// Whether a filter's handle and `tcm_info` (priority in its upper half)
/// are those of Palisade's clsact filters.
pub fn is_palisade_filter(handle: u32, info: u32) -> bool {
    handle == CLSACT_HANDLE && info >> 16 == u32::from(CLSACT_PRIORITY)
}

/// Adds the clsact qdisc cls_bpf needs to `ifindex`; one there already
/// (EEXIST) is as good.
pub fn add_clsact(ifindex: u32) -> Result<(), TcError> {
    match qdisc_add_clsact(ifindex) {
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn clsact_options() -> NlOptions {
    NlOptions {
        priority: CLSACT_PRIORITY,
        handle: TcHandle::from(CLSACT_HANDLE),
        classid: None,
    }
}

/// aya reports a netlink failure as `TcError::NetlinkError` when attaching
/// and as `ProgramError::NetlinkError` when detaching.
fn is_errno(e: &ProgramError, errno: i32) -> bool {
    match e {
        ProgramError::TcError(TcError::NetlinkError(n)) | ProgramError::NetlinkError(n) => {
            n.raw_os_error() == Some(errno)
        }
        _ => false,
    }
}

fn attach_clsact(
    prog: &mut SchedClassifier,
    name: &'static str,
    ifindex: u32,
    hook: TcHook,
) -> Result<LinkState, AttachError> {
    add_clsact(ifindex).map_err(|e| attach_error(name)(e.into()))?;
    let parent = TcHandle::from(hook.attach_type());
    let created = prog.attach(
        ifindex,
        TcAttach::Netlink {
            parent,
            options: clsact_options(),
        },
    );
    let (id, replaced) = match created {
        Ok(id) => (id, false),
        // Our filter is there from an earlier loader: swap the program in it.
        Err(e) if is_errno(&e, libc::EEXIST) => {
            let existing = SchedClassifierLink::attached(
                ifindex,
                parent,
                CLSACT_PRIORITY,
                TcHandle::from(CLSACT_HANDLE),
                None,
            )
            .map_err(|e| attach_error(name)(e.into()))?;
            (
                prog.attach_to_link(existing).map_err(attach_error(name))?,
                true,
            )
        }
        Err(e) => return Err(attach_error(name)(e)),
    };
    let link = prog.take_link(id).map_err(attach_error(name))?;
    // Dropping the link would delete the filter. It holds no file descriptor,
    // only (ifindex, parent, priority, handle), so forgetting it leaks nothing
    // and leaves the filter, like a pinned link, to outlive this process.
    std::mem::forget(link);
    Ok(LinkState::Filter { replaced })
}

/// Removes Palisade's clsact filters from `ifindex`, in the calling thread's
/// network namespace. Returns how many there were.
pub fn detach_clsact(ifindex: u32) -> Result<usize, AttachError> {
    let mut removed = 0;
    for hook in TcHook::ALL {
        removed += usize::from(detach_clsact_hook(ifindex, hook)?);
    }
    Ok(removed)
}

/// Removes Palisade's clsact filter of `hook` from `ifindex`; whether there
/// was one. No filter, no clsact qdisc and no interface all mean none.
pub fn detach_clsact_hook(ifindex: u32, hook: TcHook) -> Result<bool, AttachError> {
    let link = SchedClassifierLink::attached(
        ifindex,
        TcHandle::from(hook.attach_type()),
        CLSACT_PRIORITY,
        TcHandle::from(CLSACT_HANDLE),
        None,
    )
    .map_err(|e| attach_error(hook.program())(e.into()))?;
    match link.detach() {
        Ok(()) => Ok(true),
        // ENOENT: no such filter; EINVAL: no clsact qdisc; ENODEV: no
        // interface.
        Err(e)
            if is_errno(&e, libc::ENOENT)
                || is_errno(&e, libc::EINVAL)
                || is_errno(&e, libc::ENODEV) =>
        {
            Ok(false)
        }
        Err(e) => Err(attach_error(hook.program())(e)),
    }
}

/// What a thread of its own needs to link `hook` of `ifindex` to its
/// program and pin the link ([`link_and_pin`]): a descriptor of the loaded
/// program and the pin's path. `None` where the hook's link is pinned
/// already.
pub fn tc_link_job(
    object: &mut LoadedObject,
    pins: &PinDir,
    ifindex: u32,
    hook: TcHook,
) -> Result<Option<(std::os::fd::OwnedFd, PathBuf)>, AttachError> {
    if tc_link_pinned(pins, ifindex, hook) {
        return Ok(None);
    }
    let fd = tc_program_fd(object, hook)?;
    Ok(Some((fd, pins.link(&hook.pin_name(ifindex)))))
}

/// A descriptor of `hook`'s loaded program, for a process or thread of
/// its own to attach.
pub fn tc_program_fd(
    object: &mut LoadedObject,
    hook: TcHook,
) -> Result<std::os::fd::OwnedFd, AttachError> {
    use std::os::fd::AsFd as _;
    let name = hook.program();
    let prog: &mut SchedClassifier = program(object, name)?;
    prog.fd()
        .map_err(attach_error(name))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(AttachError::Interface)
}

/// Links `prog` to `hook` of `ifindex` as a TCX link after any other
/// (as [`attach_tc`] does), and pins it at `path`. Raw `bpf(2)` calls on
/// descriptors this thread owns, so that another thread can wait out the
/// link's RCU grace period while the reconcile loop goes on.
pub fn link_and_pin(
    prog: std::os::fd::BorrowedFd<'_>,
    ifindex: u32,
    hook: TcHook,
    path: &Path,
) -> Result<(), AttachError> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    const BPF_F_AFTER: u32 = 1 << 4;
    let attach_type = match hook.attach_type() {
        TcAttachType::Ingress => BPF_TCX_INGRESS,
        _ => BPF_TCX_EGRESS,
    };
    let failed = |what: &str, e: io::Error| AttachError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(e.kind(), format!("{what} for {}: {e}", hook.program())),
    };
    // `link_create`: prog_fd, target_ifindex, attach_type, flags; then
    // `tcx.relative_fd` 0 with BPF_F_AFTER (after every link) and no
    // expected revision. The rest of `union bpf_attr` is zero.
    let mut create = [0u32; 16];
    create[..4].copy_from_slice(&[prog.as_raw_fd() as u32, ifindex, attach_type, BPF_F_AFTER]);
    // SAFETY: `link_create`, whose fields hold no pointer.
    let fd = unsafe { super::syscall::bpf(BPF_LINK_CREATE, &mut create) }
        .map_err(|e| failed("creating a TCX link", e))?;
    // SAFETY: the kernel just gave this descriptor to this call alone.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path_c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        AttachError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "a pin path with a NUL"),
        }
    })?;
    // `union bpf_attr`'s `obj_pin` member.
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut pin = ObjPin {
        pathname: path_c.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: `obj_pin`, whose path outlives the call. The link goes with
    // its only descriptor if this fails.
    unsafe { super::syscall::bpf(BPF_OBJ_PIN, &mut pin) }
        .map_err(|e| failed("pinning a TCX link", e))?;
    Ok(())
}

/// Whether `hook`'s TCX link on `ifindex` is pinned, by this ABI or an older
/// one: [`attach_tc`] then updates that link instead of creating one.
pub fn tc_link_pinned(pins: &PinDir, ifindex: u32, hook: TcHook) -> bool {
    pinned_link(pins, &hook.pin_name(ifindex)).is_some()
}

/// Where the link `name` is pinned, by this ABI or else an older one.
fn pinned_link(pins: &PinDir, name: &str) -> Option<PathBuf> {
    std::iter::once(pins.link(name))
        .chain(pins.other_abis().iter().map(|p| p.link(name)))
        .find(|p| p.exists())
}

/// The pin name of `program`'s LSM link, under the links directory.
pub fn lsm_link(program: &str) -> String {
    format!("lsm-{program}")
}

/// Attaches every loaded LSM program (all but those whose hook the kernel
/// lacks) and pins its link as `links/lsm-<program>`.
/// An LSM link cannot be updated in place, so an existing pin is replaced by
/// attaching the new program first and dropping the old link after: for a
/// moment both run, never neither.
pub fn attach_lsm(object: &mut LoadedObject, pins: &PinDir) -> Result<Vec<LinkState>, AttachError> {
    let mut states = Vec::new();
    for &(name, _hook) in objects::LSM_HOOKS {
        let pin_name = lsm_link(name);
        let path = pins.link(&pin_name);
        let old = adopt(pins, &pin_name)?;
        let prog: &mut Lsm = program(object, name)?;
        if prog.fd().is_err() {
            // Left out at load: a hook this kernel does not have.
            continue;
        }
        let id = prog.attach().map_err(attach_error(name))?;
        let link = prog.take_link(id).map_err(attach_error(name))?;
        states.push(pin(link.into(), &path, old.is_some())?);
        drop(old);
    }
    Ok(states)
}

/// Removes every pinned link, which detaches its program once no process
/// holds it. Maps stay pinned: counters and state survive a detach.
pub fn unpin_links(pins: &PinDir) -> Result<usize, AttachError> {
    let dir = pins.links();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(AttachError::Io { path: dir, source }),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry
            .map_err(|source| AttachError::Io {
                path: dir.clone(),
                source,
            })?
            .path();
        fs::remove_file(&path).map_err(|source| AttachError::Io { path, source })?;
        removed += 1;
    }
    Ok(removed)
}

/// Detaches the XDP prefilter from `ifindex` by removing its pinned link;
/// whether there was one.
pub fn detach_xdp(pins: &PinDir, ifindex: u32) -> Result<bool, AttachError> {
    let path = pins.link(&format!("xdp-{ifindex}"));
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(AttachError::Io { path, source }),
    }
}

/// Detaches the TC programs of the endpoint on `ifindex` by removing their
/// pinned links (TCX); returns how many there were. An interface that went
/// away took its attachments with it; this clears the pins it left.
pub fn detach_tc(pins: &PinDir, ifindex: u32) -> Result<usize, AttachError> {
    let mut removed = 0;
    for hook in TcHook::ALL {
        let path = pins.link(&hook.pin_name(ifindex));
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(AttachError::Io { path, source }),
        }
    }
    Ok(removed)
}

fn program<'a, T>(
    object: &'a mut LoadedObject,
    name: &'static str,
) -> Result<&'a mut T, AttachError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    object
        .ebpf
        .program_mut(name)
        .ok_or(AttachError::MissingProgram(name))?
        .try_into()
        .map_err(attach_error(name))
}
