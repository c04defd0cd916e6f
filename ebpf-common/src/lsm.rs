//! The process and file side: per-pod rule sets the BPF-LSM programs read.
//!
//! A pod is found by its cgroup v2 id ([`PodSets`] in `PAL_LSM_PODS`); it
//! names one rule set for exec and one for file operations. A rule set is a set
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
    /// A pattern slot that guards directories for what a pattern reaches
    /// below them (`/home/*/.ssh` for `/home/*/.ssh/id_rsa`): it judges
    /// only a directory renamed, which would carry what lies in it out of
    /// the pattern's reach (or into it), and it only ever raises what the
    /// other rules decide (a guard adds protection, it never takes any
    /// away).
    pub const GUARD: u8 = 4;
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

impl Verdict {
    /// How much the verdict blocks: the action, then whether it spares the
    /// owner (an `ownerOnly` Block blocks less than a Block).
    #[inline(always)]
    pub fn strictness(&self) -> u8 {
        2 * self.action + u8::from(self.flags & verdict_flags::OWNER_ONLY == 0)
    }
}

pub mod entry_kind {
    pub const ROOT: u8 = 0;
    pub const FILE: u8 = 1;
    /// A directory that covers its direct children only.
    pub const DIR: u8 = 2;
    pub const DIR_RECURSIVE: u8 = 3;
    /// A directory's own name (`/etc/ssl`, with its NUL) where the
    /// directory has rules: renaming, removing, making or changing it
    /// writes what they protect, so its write verdict is the stricter of
    /// theirs and its parent's (the compiler resolves both, and the
    /// patterns, as for a file's entry).
    pub const DIR_NAME: u8 = 4;
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

/// Set in a set id: the set has patterns (`matchPatterns`), found in
/// `PAL_LSM_PATTERNS` by the set's id.
pub const HAS_PATTERNS: u32 = 1 << 30;
/// Set in a set id: some verdict of the set, or of one of its `fromSource`
/// sets, blocks (a Block rule, an `ownerOnly` one, a default that
/// blocks). A run that could not judge its path (its working memory taken
/// on every try) is blocked where this is set, and only audited where
/// nothing in the set could block.
pub const CAN_BLOCK: u32 = 1 << 29;
/// The bits of a set id that name the set (the rest are the flags above).
pub const SET_ID_MASK: u32 = CAN_BLOCK - 1;

/// The policy of a verdict given without judging the path: the run lost
/// its working memory to other runs on every try.
pub const UNJUDGED_POLICY: u32 = u32::MAX - 1;

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
    pub const PATH_CHMOD: u8 = 6;
    pub const PATH_CHOWN: u8 = 7;
    pub const PATH_MKNOD: u8 = 8;
    pub const PATH_MKDIR: u8 = 9;
    pub const PATH_SYMLINK: u8 = 10;
    pub const PATH_RMDIR: u8 = 11;
    pub const INODE_SETXATTR: u8 = 12;
    pub const INODE_REMOVEXATTR: u8 = 13;
    pub const INODE_SET_ACL: u8 = 14;
    pub const INODE_REMOVE_ACL: u8 = 15;
}

/// The kernel's name of a [`hook`].
pub const fn hook_name(h: u8) -> &'static str {
    match h {
        hook::EXEC => "bprm_check_security",
        hook::FILE_OPEN => "file_open",
        hook::PATH_UNLINK => "path_unlink",
        hook::PATH_RENAME => "path_rename",
        hook::PATH_LINK => "path_link",
        hook::PATH_TRUNCATE => "path_truncate",
        hook::PATH_CHMOD => "path_chmod",
        hook::PATH_CHOWN => "path_chown",
        hook::PATH_MKNOD => "path_mknod",
        hook::PATH_MKDIR => "path_mkdir",
        hook::PATH_SYMLINK => "path_symlink",
        hook::PATH_RMDIR => "path_rmdir",
        hook::INODE_SETXATTR => "inode_setxattr",
        hook::INODE_REMOVEXATTR => "inode_removexattr",
        hook::INODE_SET_ACL => "inode_set_acl",
        hook::INODE_REMOVE_ACL => "inode_remove_acl",
        _ => "unknown",
    }
}

/// How many directory levels the path hooks' walk climbs: as deep as a
/// path of PATH_MAX bytes can be (each level is at least `/` and one
/// byte), so the walk resolves every path `bpf_d_path` would. A path it
/// cannot resolve is judged by the default, never allowed silently.
pub const WALK_DEPTH: usize = PATH_MAX / 2;

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
    /// Another run on the CPU took the working memory while this one was
    /// preempted: the event's path may be that run's, not this one's.
    /// With `UNRESOLVED`, it took it on every try and the operation was
    /// not judged: blocked where the pod's set could block (`CAN_BLOCK`),
    /// audited where it could not.
    pub const INTERLEAVED: u8 = 16;
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
    /// An [`event_op`].
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
    pub const CHMOD: u8 = 7;
    pub const CHOWN: u8 = 8;
    /// A new name: a file created; a FIFO, socket, device node, directory
    /// or symlink made.
    pub const CREATE: u8 = 9;
    /// An extended attribute set or removed, a POSIX ACL included: the
    /// file's metadata, as its mode is (an ACL can open it to others, a
    /// `security.capability` grants capabilities to whoever runs it).
    pub const XATTR: u8 = 10;
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
    /// `struct inode`: `i_mode` (whether a path is a directory).
    pub const INODE_I_MODE: &str = "PAL_OFF_INODE_I_MODE";
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
    /// `struct dentry`: `d_sb`.
    pub const DENTRY_SB: &str = "PAL_OFF_D_SB";
    /// `struct super_block`: `s_mounts`, the first of the superblock's
    /// mounts (a `list_head` before Linux 6.16, a `struct mount *` since).
    pub const SB_MOUNTS: &str = "PAL_OFF_SB_MOUNTS";
    /// What a link of that list points into: `struct mount`'s
    /// `mnt_instance` (subtracted to find the mount), or 0 where the link
    /// is the mount's own address.
    pub const MOUNT_SB_LINK: &str = "PAL_OFF_MOUNT_SB_LINK";
    /// `struct mount`: the next link (`mnt_instance.next`, or
    /// `mnt_next_for_sb`).
    pub const MOUNT_SB_NEXT: &str = "PAL_OFF_MOUNT_SB_NEXT";
    /// `struct mount`: `mnt_ns`.
    pub const MOUNT_NS: &str = "PAL_OFF_MOUNT_NS";
    /// `struct task_struct`: `nsproxy`.
    pub const TASK_NSPROXY: &str = "PAL_OFF_TASK_NSPROXY";
    /// `struct nsproxy`: `mnt_ns`.
    pub const NSPROXY_MNT_NS: &str = "PAL_OFF_NSPROXY_MNT_NS";
    /// `struct task_struct`: `cred` and `real_cred` (they differ while
    /// the kernel acts with borrowed credentials, as overlayfs does on
    /// its upper layer).
    pub const TASK_CRED: &str = "PAL_OFF_TASK_CRED";
    pub const TASK_REAL_CRED: &str = "PAL_OFF_TASK_REAL_CRED";
}

/// `fmode_t` and open flag bits: part of the kernel's behaviour for decades.
pub mod fmode {
    pub const WRITE: u32 = 0x2;
    /// `__FMODE_EXEC` in `f_flags`: the open execve(2) makes of the
    /// program, a process rule's business. (`f_mode`'s FMODE_EXEC is not
    /// set on that open.)
    pub const EXEC_FLAG: u32 = 0x20;
}

/// Patterns (`matchPatterns`) run as one automaton per rule set: every
/// pattern of the set is a chain of states (one per token, one more for
/// "matched") in a bit vector of [`PATTERN_WORDS`] words, and each byte of
/// the path moves every live state at once (a bit-parallel NFA). The cost
/// is a few instructions per byte and word whatever the wildcards, and
/// nothing ever backtracks.
///
/// Tokens: a byte; `?` (one byte but `/`); `*` (stays on bytes but `/`,
/// and may be left at any time); `**` (the same on any byte); `**/` as a
/// whole component, which is two states: one that is either skipped
/// whole or entered, and one inside that stays on any byte and leaves
/// only on a `/`. Moves that read no byte ([`PatternSet::eps`] to the next
/// state, [`PatternSet::skip`] over one) are closed over
/// [`PatternSet::rounds`] times after each byte (the longest run of
/// wildcards in a row).
pub const PATTERN_WORDS: usize = 4;
/// Patterns per rule set.
pub const MAX_PATTERNS: usize = 16;
/// The longest run of wildcard tokens in a row a pattern may have.
pub const PATTERN_ROUNDS: u32 = 4;

/// One pattern of a [`PatternSet`]: where its "matched" state is, and
/// what it says when it matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PatternSlot {
    pub word: u8,
    pub bit: u8,
    /// By operation: 0 when the pattern's rules do not cover it, else
    /// 1 + 2 * action + ownerOnly. The highest rank among the patterns that
    /// match decides (the first of equals).
    pub rank: [u8; 2],
    pub _pad: [u8; 4],
    pub verdict: [Verdict; 2],
}

/// Value of `PAL_LSM_PATTERNS`: one set's patterns as an automaton.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatternSet {
    /// Words of state in use (1..=[`PATTERN_WORDS`]): a byte costs a few
    /// instructions per word.
    pub words: u32,
    /// Closure rounds after each byte (at most [`PATTERN_ROUNDS`]).
    pub rounds: u32,
    /// Slots in use.
    pub count: u32,
    pub _pad: u32,
    /// The states live before the first byte (already closed).
    pub start: [u64; PATTERN_WORDS],
    /// States that move on to the next without reading a byte.
    pub eps: [u64; PATTERN_WORDS],
    /// States that move on to the one after the next without reading a
    /// byte (skipping a `**/` whole).
    pub skip: [u64; PATTERN_WORDS],
    /// States that stay on a `/`, and on any other byte.
    pub stay_slash: [u64; PATTERN_WORDS],
    pub stay_other: [u64; PATTERN_WORDS],
    pub slots: [PatternSlot; MAX_PATTERNS],
    /// By byte: the states that move on to the next on reading it.
    pub adv: [[u64; PATTERN_WORDS]; 256],
}

impl PatternSet {
    pub const fn empty() -> Self {
        Self {
            words: 1,
            rounds: 0,
            count: 0,
            _pad: 0,
            start: [0; PATTERN_WORDS],
            eps: [0; PATTERN_WORDS],
            skip: [0; PATTERN_WORDS],
            stay_slash: [0; PATTERN_WORDS],
            stay_other: [0; PATTERN_WORDS],
            slots: [PatternSlot {
                word: 0,
                bit: 0,
                rank: [0; 2],
                _pad: [0; 4],
                verdict: [Verdict {
                    action: 0,
                    flags: 0,
                    _pad: [0; 2],
                    policy: 0,
                }; 2],
            }; MAX_PATTERNS],
            adv: [[0; PATTERN_WORDS]; 256],
        }
    }

    /// The live states after reading `byte` in states `d`. The kernel and
    /// the daemon's model of it (`palisade explain`, the tests) share this.
    #[inline(always)]
    pub fn step(&self, d: &mut [u64; PATTERN_WORDS], byte: u8) {
        let adv = &self.adv[byte as usize];
        let stay = if byte == b'/' {
            &self.stay_slash
        } else {
            &self.stay_other
        };
        let mut carry = 0;
        for w in 0..PATTERN_WORDS {
            if w as u32 >= self.words {
                break;
            }
            let moved = d[w] & adv[w];
            let next = (moved << 1) | carry | (d[w] & stay[w]);
            carry = moved >> 63;
            d[w] = next;
        }
        self.close(d);
    }

    /// Adds the states reachable without reading a byte.
    #[inline(always)]
    // Indexing with a constant bound is what the verifier follows best.
    #[allow(clippy::needless_range_loop)]
    pub fn close(&self, d: &mut [u64; PATTERN_WORDS]) {
        for round in 0..PATTERN_ROUNDS {
            if round >= self.rounds {
                break;
            }
            let (mut carry, mut carry2) = (0, 0);
            for w in 0..PATTERN_WORDS {
                if w as u32 >= self.words {
                    break;
                }
                let e = d[w] & self.eps[w];
                let k = d[w] & self.skip[w];
                let add = (e << 1) | carry | (k << 2) | carry2;
                carry = e >> 63;
                carry2 = k >> 62;
                d[w] |= add;
            }
        }
    }

    /// Slot `k`, once the path has been read into states `d`, for
    /// operation `which`: run over every slot, `choice` ends with the
    /// deciding ordinary slot (the highest rank that matched, the first of
    /// equals) and the strictest guard slot ([`verdict_flags::GUARD`]) that
    /// matched, the latter only for a directory renamed (`renamed_dir`).
    /// The two are kept apart: a guard only ever raises the decision the
    /// rest reach, whatever their ranks. The kernel runs this as a
    /// `bpf_loop` callback, which the verifier checks once: unrolled, the
    /// two running choices made the rename program too complex.
    #[inline(always)]
    pub fn consider(
        &self,
        k: usize,
        d: &[u64; PATTERN_WORDS],
        which: usize,
        renamed_dir: bool,
        choice: &mut SlotChoice,
    ) {
        let slot = &self.slots[k & (MAX_PATTERNS - 1)];
        let live = d[(slot.word as usize) & (PATTERN_WORDS - 1)] >> (slot.bit & 63) & 1;
        let rank = slot.rank[which & 1];
        if live == 0 {
            return;
        }
        // Field by field: a copy of the whole verdict, whose first bytes
        // were already read, became a call to `memmove` in the kernel's
        // program (a byte loop the verifier walks through).
        let v = &slot.verdict[which & 1];
        let v = Verdict {
            action: v.action,
            flags: v.flags,
            _pad: [0; 2],
            policy: v.policy,
        };
        if v.flags & verdict_flags::GUARD == 0 {
            if rank > choice.best_rank {
                choice.best = v;
                choice.best_rank = rank;
                choice.best_slot = k as u8;
            }
        } else if renamed_dir && rank > choice.guard_rank {
            choice.guard = v;
            choice.guard_rank = rank;
            choice.guard_slot = k as u8;
        }
    }

    /// Whether any state of `d` is live: word by word, where comparing
    /// the array with zeros became a call to `memcmp` in the kernel's
    /// program.
    #[inline(always)]
    pub fn any_live(d: &[u64; PATTERN_WORDS]) -> bool {
        let mut any = 0;
        for word in d {
            any |= *word;
        }
        any != 0
    }
}

/// What [`PatternSet::consider`] has chosen so far (a rank of 0: nothing),
/// and from which slots. Aligned to words so that the kernel's program
/// zeroes it with stores, not a call to `memset`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default)]
pub struct SlotChoice {
    pub best: Verdict,
    pub guard: Verdict,
    pub best_rank: u8,
    pub guard_rank: u8,
    pub best_slot: u8,
    pub guard_slot: u8,
    pub _pad: [u8; 4],
}

impl SlotChoice {
    /// The ordinary pattern's verdict and the guard's, where any matched.
    #[inline(always)]
    pub fn verdicts(&self) -> (Option<Verdict>, Option<Verdict>) {
        (
            (self.best_rank > 0).then_some(self.best),
            (self.guard_rank > 0).then_some(self.guard),
        )
    }
}

const _: () = {
    assert!(size_of::<RuleData>() == 256);
    assert!(size_of::<Verdict>() == 8);
    assert!(size_of::<PathRule>() == 36);
    assert!(size_of::<PodSets>() == 8);
    assert!(size_of::<LsmConfig>() == 16);
    assert!(size_of::<DecisionKey>() == 8);
    assert!(size_of::<LsmEvent>() == 304);
    assert!(size_of::<PatternSlot>() == 24);
    assert!(
        size_of::<PatternSet>()
            == 16 + 5 * 8 * PATTERN_WORDS + 24 * MAX_PATTERNS + 256 * 8 * PATTERN_WORDS
    );
    assert!(PATTERN_WORDS.is_power_of_two());
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
    unsafe impl aya::Pod for PatternSet {}
}
