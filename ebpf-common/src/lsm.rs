//! The process and file side: per-pod rule sets the BPF-LSM programs read.
//!
//! A pod is found by its cgroup v2 id ([`PodSets`] in `PAL_LSM_PODS`); it
//! names one rule set for exec and one for file opens. A rule set is a set
//! of entries in one LPM trie (`PAL_LSM_RULES`) keyed by the set's id and
//! the path's bytes, so the kernel itself finds the most specific rule:
//! - a file rule is its path and the terminating NUL, so `/etc/shadow`
//!   never matches `/etc/shadowx`;
//! - a directory rule is its path with the trailing `/`, so `/etc/ssl/`
//!   never matches `/etc/sslx`;
//! - every set has a root entry (the set's id alone): the section's default.
//!
//! The compiler resolves everything the trie cannot: each entry carries the
//! verdict for a direct match and, for a non-recursive directory, the one
//! for paths deeper than its children (what the nearest enclosing rule or
//! the default says), each for reads and writes. Sets are written under a
//! fresh id and then swapped in by rewriting the pod's [`PodSets`], so a pod
//! never sees half a rule set.

use core::mem::size_of;

/// Path bytes in a key: the LPM trie's data is at most 256 bytes, four of
/// which name the set. Rule paths are at most [`MAX_RULE_PATH`] bytes, so
/// every rule (with its NUL) fits; longer paths are still matched against
/// every directory rule by their first bytes.
pub const KEY_PATH_BYTES: usize = 252;
/// The longest rule path, in bytes (without a NUL).
pub const MAX_RULE_PATH: usize = 250;
/// What `bpf_d_path` may write: PATH_MAX.
pub const PATH_MAX: usize = 4096;
/// Path bytes an event carries; longer paths are cut and flagged.
pub const EVENT_PATH_BYTES: usize = 256;

/// The data of a `PAL_LSM_RULES` key (after the LPM prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleData {
    pub set: u32,
    pub path: [u8; KEY_PATH_BYTES],
}

impl RuleData {
    /// The entry for `path` in `set` and its prefix length in bits: a file
    /// with its NUL, a directory (ending in `/`) without. `None` when the
    /// path does not fit.
    pub fn entry(set: u32, path: &[u8], file: bool) -> Option<(u32, Self)> {
        let len = path.len() + usize::from(file);
        if len > KEY_PATH_BYTES {
            return None;
        }
        let mut data = Self {
            set,
            path: [0; KEY_PATH_BYTES],
        };
        data.path[..path.len()].copy_from_slice(path);
        Some((32 + 8 * len as u32, data))
    }

    /// The set's root entry: its default.
    pub fn root(set: u32) -> (u32, Self) {
        (
            32,
            Self {
                set,
                path: [0; KEY_PATH_BYTES],
            },
        )
    }
}

pub mod action {
    pub const ALLOW: u8 = 0;
    pub const AUDIT: u8 = 1;
    pub const BLOCK: u8 = 2;
}

pub mod verdict_flags {
    /// The file's owner is allowed; anyone else gets the action.
    pub const OWNER_ONLY: u8 = 1;
    /// The section's default (posture), not a rule: counted as such.
    pub const DEFAULT: u8 = 2;
}

/// What one entry says for one kind of operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub action: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// The deciding policy's id (the daemon names it); 0 for a default
    /// nobody wrote.
    pub policy: u32,
}

pub mod entry_kind {
    pub const ROOT: u8 = 0;
    pub const FILE: u8 = 1;
    /// A directory that covers its direct children only.
    pub const DIR: u8 = 2;
    pub const DIR_RECURSIVE: u8 = 3;
}

/// Index of a [`Verdict`] by operation: exec rule sets use `READ`.
pub mod op {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathRule {
    /// Bytes of path the entry matched (its key's path length, NUL included
    /// for a file): where a non-recursive directory's children start.
    pub len: u16,
    pub kind: u8,
    pub _pad: u8,
    /// A direct match, by operation.
    pub direct: [Verdict; 2],
    /// A path below a non-recursive directory's children, by operation.
    pub deeper: [Verdict; 2],
}

/// Set in a [`PodSets`] id: the set has `fromSource` sets, found in
/// `PAL_LSM_SOURCES` by (set id, the process's executable with its NUL).
pub const HAS_SOURCES: u32 = 1 << 31;

/// A pod's rule sets; 0 means none (every operation allowed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodSets {
    pub process: u32,
    pub file: u32,
}

/// Levels (depth below the cgroup2 root) at which pod cgroups live on this
/// node, besides a process's own cgroup: a container's processes sit one or
/// more levels below their pod. Zero entries are unused.
pub const CGROUP_LEVELS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LsmConfig {
    pub levels: [u32; CGROUP_LEVELS],
}

pub mod hook {
    pub const EXEC: u8 = 0;
    pub const FILE_OPEN: u8 = 1;
    pub const PATH_UNLINK: u8 = 2;
    pub const PATH_RENAME: u8 = 3;
    pub const PATH_LINK: u8 = 4;
    pub const PATH_TRUNCATE: u8 = 5;
}

/// The kernel's name of a [`hook`].
pub const fn hook_name(h: u8) -> &'static str {
    match h {
        hook::EXEC => "bprm_check_security",
        hook::FILE_OPEN => "file_open",
        hook::PATH_UNLINK => "path_unlink",
        hook::PATH_RENAME => "path_rename",
        hook::PATH_LINK => "path_link",
        _ => "path_truncate",
    }
}

/// How many directory levels the path hooks' walk climbs; a deeper path is
/// unresolved (judged by the default, never allowed silently).
pub const WALK_DEPTH: usize = 40;

pub mod event_flags {
    /// The path did not fit the event; it was cut.
    pub const PATH_CUT: u8 = 1;
    /// The kernel could not resolve the path (deeper or longer than
    /// PATH_MAX): judged by the section's default, never allowed silently.
    pub const UNRESOLVED: u8 = 2;
    /// Judged without knowing whether a non-recursive directory covered it
    /// (the path was longer than a key): the stricter verdict was taken.
    pub const AMBIGUOUS: u8 = 4;
    /// The section's default decided, not a rule.
    pub const DEFAULT: u8 = 8;
}

/// One Block or Audit decision, for `palisade events`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LsmEvent {
    pub timestamp_ns: u64,
    pub cgroup: u64,
    pub pid: u32,
    pub uid: u32,
    pub policy: u32,
    pub hook: u8,
    /// 0 read, 1 write, 2 exec.
    pub op: u8,
    pub action: u8,
    pub flags: u8,
    pub comm: [u8; 16],
    pub path: [u8; EVENT_PATH_BYTES],
}

pub mod event_op {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const EXEC: u8 = 2;
    pub const UNLINK: u8 = 3;
    pub const RENAME: u8 = 4;
    pub const LINK: u8 = 5;
    pub const TRUNCATE: u8 = 6;
}

/// Key of `PAL_LSM_DECIDE`: Block and Audit decisions by policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DecisionKey {
    pub policy: u32,
    pub hook: u8,
    pub action: u8,
    /// [`verdict_flags::DEFAULT`] or 0.
    pub flags: u8,
    pub _pad: u8,
}

/// Structure offsets the programs read, from the running kernel's BTF,
/// set by the loader as globals (aya emits no CO-RE relocations).
pub mod globals {
    /// `struct file`: `f_path`.
    pub const FILE_F_PATH: &str = "PAL_OFF_FILE_F_PATH";
    /// `struct file`: `f_mode`.
    pub const FILE_F_MODE: &str = "PAL_OFF_FILE_F_MODE";
    /// `struct file`: `f_flags`.
    pub const FILE_F_FLAGS: &str = "PAL_OFF_FILE_F_FLAGS";
    /// `struct file`: `f_inode`.
    pub const FILE_F_INODE: &str = "PAL_OFF_FILE_F_INODE";
    /// `struct inode`: `i_uid`.
    pub const INODE_I_UID: &str = "PAL_OFF_INODE_I_UID";
    /// `struct linux_binprm`: `file`.
    pub const BPRM_FILE: &str = "PAL_OFF_BPRM_FILE";
    /// `struct task_struct`: `mm`.
    pub const TASK_MM: &str = "PAL_OFF_TASK_MM";
    /// `struct mm_struct`: `exe_file`.
    pub const MM_EXE_FILE: &str = "PAL_OFF_MM_EXE_FILE";
    /// `struct task_struct`: `fs`.
    pub const TASK_FS: &str = "PAL_OFF_TASK_FS";
    /// `struct fs_struct`: `root`.
    pub const FS_ROOT: &str = "PAL_OFF_FS_ROOT";
    /// `struct path`: `mnt`.
    pub const PATH_MNT: &str = "PAL_OFF_PATH_MNT";
    /// `struct path`: `dentry`.
    pub const PATH_DENTRY: &str = "PAL_OFF_PATH_DENTRY";
    /// `struct dentry`: `d_parent`.
    pub const DENTRY_PARENT: &str = "PAL_OFF_D_PARENT";
    /// `struct dentry`: `d_name` plus `struct qstr`'s `len`.
    pub const DENTRY_NAME_LEN: &str = "PAL_OFF_D_NAME_LEN";
    /// `struct dentry`: `d_name` plus `struct qstr`'s `name`.
    pub const DENTRY_NAME: &str = "PAL_OFF_D_NAME";
    /// `struct dentry`: `d_inode`.
    pub const DENTRY_INODE: &str = "PAL_OFF_D_INODE";
    /// `struct vfsmount`: `mnt_root`.
    pub const VFSMOUNT_ROOT: &str = "PAL_OFF_MNT_ROOT";
    /// `struct mount`: `mnt` (the vfsmount inside it).
    pub const MOUNT_MNT: &str = "PAL_OFF_MOUNT_MNT";
    /// `struct mount`: `mnt_parent`.
    pub const MOUNT_PARENT: &str = "PAL_OFF_MOUNT_PARENT";
    /// `struct mount`: `mnt_mountpoint`.
    pub const MOUNT_MOUNTPOINT: &str = "PAL_OFF_MOUNTPOINT";
}

/// `fmode_t` and open flag bits: part of the kernel's behaviour for decades.
pub mod fmode {
    pub const WRITE: u32 = 0x2;
    /// `__FMODE_EXEC` in `f_flags`: the open execve(2) makes of the
    /// program, a process rule's business. (`f_mode`'s FMODE_EXEC is not
    /// set on that open.)
    pub const EXEC_FLAG: u32 = 0x20;
}

const _: () = {
    assert!(size_of::<RuleData>() == 256);
    assert!(size_of::<Verdict>() == 8);
    assert!(size_of::<PathRule>() == 36);
    assert!(size_of::<PodSets>() == 8);
    assert!(size_of::<LsmConfig>() == 16);
    assert!(size_of::<DecisionKey>() == 8);
    assert!(size_of::<LsmEvent>() == 304);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: #[repr(C)], integer-only, with explicit padding fields: every
    // byte pattern is a valid value.
    unsafe impl aya::Pod for RuleData {}
    unsafe impl aya::Pod for PathRule {}
    unsafe impl aya::Pod for PodSets {}
    unsafe impl aya::Pod for LsmConfig {}
    unsafe impl aya::Pod for DecisionKey {}
    unsafe impl aya::Pod for LsmEvent {}
}
