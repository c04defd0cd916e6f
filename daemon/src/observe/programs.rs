//! What the kernel itself counts for Palisade's LSM programs: the runs it
//! skipped.
//!
//! An LSM program runs from a BPF trampoline. Where the trampoline keeps a
//! per-program recursion guard (`prog->active`, which some kernels apply
//! to LSM programs), a run that finds another run of the same program in
//! progress on its CPU is not made at all: the kernel adds one to the
//! program's `recursion_misses` and the hook returns its default, so the
//! operation passes unjudged. That happens when a run is preempted midway
//! (`preempt=full`, PREEMPT_RT) and another task on the CPU reaches the
//! same hook. Nothing in the program can see it; only this count can, and
//! `palisade status`, the daemon's status and
//! `palisade_lsm_runs_skipped_total` report it.

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use aya::programs::{Lsm, ProgramFd, links::PinnedLink};
use aya_obj::generated::bpf_prog_info;

use crate::{
    loader::{LoadedObject, attach, objects, syscall},
    paths::PinDir,
};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_TYPE_LSM: u32 = 29;

/// Descriptors of the LSM programs a daemon loaded, by program name: the
/// daemon reads their counts with no capability beyond holding them.
pub struct LsmPrograms(Vec<(&'static str, ProgramFd)>);

impl LsmPrograms {
    /// The programs of `object` the kernel took (a hook it lacks leaves
    /// its program unloaded and out of this list).
    pub fn of(object: &LoadedObject) -> io::Result<Self> {
        let mut programs = Vec::new();
        for &(name, _hook) in objects::LSM_HOOKS {
            let Some(program) = object.ebpf.program(name) else {
                continue;
            };
            let Ok(lsm) = <&Lsm>::try_from(program) else {
                continue;
            };
            if let Ok(fd) = lsm.fd() {
                programs.push((name, fd.try_clone()?));
            }
        }
        Ok(Self(programs))
    }

    /// Each program's skipped runs since it loaded.
    pub fn runs_skipped(&self) -> Vec<(&'static str, io::Result<u64>)> {
        self.0
            .iter()
            .map(|(name, fd)| (*name, runs_skipped(fd.as_fd(), None)))
            .collect()
    }
}

/// The skipped runs of the program attached by each pinned LSM link under
/// `pins` (`links/lsm-<program>`), by program. Opening a program by its
/// id takes `CAP_SYS_ADMIN`: this is `palisade status`'s way, run as root.
pub fn pinned_runs_skipped(pins: &PinDir) -> Vec<(&'static str, io::Result<u64>)> {
    objects::LSM_HOOKS
        .iter()
        .filter_map(|&(name, _hook)| {
            let path = pins.link(&attach::lsm_link(name));
            path.exists().then(|| (name, linked_runs_skipped(&path)))
        })
        .collect()
}

fn linked_runs_skipped(link: &Path) -> io::Result<u64> {
    let link = PinnedLink::from_pin(link).map_err(io::Error::other)?;
    let id = aya::programs::links::FdLink::from(link)
        .info()
        .map_err(io::Error::other)?
        .program_id();
    runs_skipped(program_by_id(id)?.as_fd(), Some(id))
}

fn program_by_id(id: u32) -> io::Result<OwnedFd> {
    // `union bpf_attr`'s member for the `*_GET_FD_BY_ID` commands.
    #[repr(C)]
    struct ById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = ById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: the command's member, which holds no pointer.
    let fd = unsafe { syscall::bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) }?;
    // SAFETY: the kernel just gave this descriptor to this call alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `recursion_misses` of the program behind `fd` (Linux 5.12+; an older
/// kernel copies less of the info, and the count reads 0, which is true
/// there: its trampolines had no such guard to miss). The program must be
/// an LSM program (and the one of id `id`, if given): a layout read wrong
/// fails here rather than reading as no runs skipped.
fn runs_skipped(fd: BorrowedFd<'_>, id: Option<u32>) -> io::Result<u64> {
    // SAFETY: `bpf_prog_info` is plain data; all zeros is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // `union bpf_attr`'s `info` member.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: the command's member; `info` outlives the call, and the
    // kernel writes at most `info_len` bytes into it.
    unsafe { syscall::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    if info.type_ != BPF_PROG_TYPE_LSM || id.is_some_and(|id| id != info.id) {
        return Err(io::Error::other(format!(
            "program {} of type {} is not the LSM program asked for",
            info.id, info.type_
        )));
    }
    Ok(info.recursion_misses)
}
