//! BPF-LSM programs for process and file rules (`ebpf_common::lsm`).
//!
//! `pal_lsm_exec` judges every exec (`bprm_check_security`) and
//! `pal_lsm_open` every open (`file_open`) of a process in a pod that has
//! rule sets, by the path the kernel resolved (`bpf_d_path`: symlinks are
//! judged as their targets). A Block fails the system call with EPERM; an
//! Audit lets it through. Both are counted by policy and reported as events.
//! Processes outside every selected pod cost one hash lookup per configured
//! cgroup level, and are never judged.
#![no_std]
#![no_main]

use core::{
    hint::black_box,
    mem::MaybeUninit,
    ptr::{addr_of_mut, read_volatile},
};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST, path},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_current_task_btf, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{self, bpf_d_path, bpf_get_current_comm},
    },
    macros::{lsm, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::LsmContext,
};
use ebpf_common::{
    datapath::event_rate,
    kernel::{add, count_atomic, put},
    lsm::{
        CAN_BLOCK, CGROUP_LEVELS, DecisionKey, EVENT_PATH_BYTES, HAS_PATTERNS, HAS_SOURCES,
        KEY_PATH_BYTES, LsmConfig, LsmEvent, MAX_PATTERNS, PATH_MAX, PATTERN_WORDS, PathRule,
        PatternSet, PodSets, RuleData, SET_ID_MASK, SlotChoice, UNJUDGED_POLICY, Verdict,
        WALK_DEPTH, action, entry_kind, event_flags, event_op, fmode, hook, op, verdict_flags,
    },
    maps::size,
    reason,
    stats::{Counter, STATS_ENTRIES, direction},
};

#[map(name = "PAL_LSM_STATS")]
static PAL_LSM_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);
#[map(name = "PAL_LSM_PODS")]
static PAL_LSM_PODS: HashMap<u64, PodSets> = HashMap::with_max_entries(size::LSM_PODS, 0);
#[map(name = "PAL_LSM_RULES")]
static PAL_LSM_RULES: LpmTrie<RuleData, PathRule> = LpmTrie::with_max_entries(size::LSM_RULES, 0);
#[map(name = "PAL_LSM_SOURCES")]
static PAL_LSM_SOURCES: LpmTrie<RuleData, u32> = LpmTrie::with_max_entries(size::LSM_SOURCES, 0);
#[map(name = "PAL_LSM_PATTERN")]
static PAL_LSM_PATTERN: HashMap<u32, PatternSet> =
    HashMap::with_max_entries(size::LSM_PATTERNS, BPF_F_NO_PREALLOC);
#[map(name = "PAL_LSM_CONFIG")]
static PAL_LSM_CONFIG: Array<LsmConfig> = Array::with_max_entries(1, 0);
#[map(name = "PAL_LSM_DECIDE")]
static PAL_LSM_DECIDE: PerCpuHashMap<DecisionKey, u64> =
    PerCpuHashMap::with_max_entries(size::LSM_DECIDE, 0);
#[map(name = "PAL_LSM_EVENTS")]
static PAL_LSM_EVENTS: RingBuf = RingBuf::with_byte_size(size::LSM_EVENTS, 0);

/// One run's working memory: the rule key, whose path is the first bytes
/// of the whole resolved path, so `bpf_d_path` writes the key in place.
#[repr(C)]
pub struct Scratch {
    prefixlen: u32,
    set: u32,
    path: [u8; PATH_MAX],
    /// The key's path after a non-recursive directory's own bytes, and
    /// whether [`slash_step`] found a '/' in it.
    tail: [u8; KEY_PATH_BYTES],
    tail_slash: u64,
    /// What the pattern slots chose ([`pattern_slot`]).
    choice: SlotChoice,
    /// The path hooks' walk writes the path here from the end backwards
    /// (with room for one name past the end, for the verifier).
    walk: [u8; PATH_MAX + 256],
    /// Where the walk's path starts in `walk`, and how it ended
    /// ([`walk_state`]).
    walk_at: u64,
    walk_state: u64,
    /// An inode hook's candidate mounts (`struct vfsmount *`): its
    /// filesystem's mounts in the process's mount namespace, and how the
    /// search for them ended ([`mount_search`]).
    mounts: [u64; MOUNT_CANDIDATES],
    mounts_found: u64,
    mount_search: u64,
    /// Mounts of the file system in other namespaces, or detached.
    foreign: [u64; FOREIGN_CANDIDATES],
    foreign_found: u64,
    /// Whether more of the namespace's mounts could hold the dentry than
    /// were kept as candidates.
    own_more: u64,
    /// The roots of the file system's mounts the kernel keeps to itself.
    internal_roots: [u64; INTERNAL_ROOTS],
    internal_found: u64,
    /// Whether the dentry lies in a kernel mount's tree ([`layer_step`]).
    in_layer: u64,
    /// The thread whose run holds the scratch ([`hold`]).
    holder: u64,
    /// The one field that persists between runs: the event rate limit.
    credit_ns: u64,
    last_ns: u64,
}

#[map(name = "PAL_LSM_SCRATCH")]
static PAL_LSM_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// How many times a run resolves and judges its path before it gives up
/// on a scratch that other runs keep taking ([`hold`]).
const RUN_TRIES: u32 = 2;

/// Marks the scratch as the calling thread's, and returns that thread's
/// id. The programs run with migration disabled but, where the kernel
/// preempts kernel code (`preempt=full`, PREEMPT_RT), not with preemption
/// disabled: a run can stop midway, another task's run on the same CPU
/// take the scratch and write its own path there, and the first resume
/// with that path under its own rules (in a guest test under
/// `preempt=full`, a blocked file's mode changed). Every run marks the
/// scratch first and asks [`held`] after its last read: a thread runs one
/// hook at a time, so while a run lasts no other run can mark it with the
/// same id. The scratch is handed to `black_box` at both points, so that
/// the compiler cannot move the run's reads of it before the mark or after
/// the check (a volatile access orders only other volatile ones, and the
/// BPF backend has no fence to select); the CPU is this one, so no
/// barrier instruction is needed.
#[inline(always)]
fn hold(s: &mut Scratch) -> u64 {
    let tid = bpf_get_current_pid_tgid() & 0xffff_ffff;
    put(&mut s.holder, tid);
    black_box(addr_of_mut!(*s));
    tid
}

/// Whether no other run took the scratch since [`hold`] gave `tid`.
#[inline(always)]
fn held(s: &mut Scratch, tid: u64) -> bool {
    black_box(addr_of_mut!(*s));
    // SAFETY: a field of the scratch.
    unsafe { read_volatile(&s.holder) == tid }
}

/// The verdict of a run that lost the scratch to other runs on every
/// try, in `set` (the pod's, before any `fromSource` set: those the
/// try chose came from the scratch): its path is not known to be its own.
/// Where anything in the set could block ([`CAN_BLOCK`]) it is blocked
/// (let through, it would let a process that can keep other runs
/// interleaved pass its own forbidden operations); where nothing could,
/// it is audited, as any operation of such a set is at most.
#[inline(always)]
fn interleaved(set: u32) -> (Verdict, u8) {
    let action = if set & CAN_BLOCK != 0 {
        action::BLOCK
    } else {
        action::AUDIT
    };
    (
        Verdict {
            action,
            policy: UNJUDGED_POLICY,
            ..Verdict::default()
        },
        event_flags::UNRESOLVED | event_flags::INTERLEAVED,
    )
}

/// What one try of a run made of its operation.
enum Judged {
    /// The verdict, its event flags, and the path's length as resolved.
    Verdict(Verdict, u8, i64),
    /// Not the process's own operation (overlayfs's, on its layers).
    Pass,
}

/// One try of a run: resolve the path into the scratch and judge it.
trait Attempt {
    fn attempt(&self, s: &mut Scratch) -> Judged;
}

/// The tries of one run ([`judge_holding`]): what each needs, and the
/// outcome of the one that kept the scratch. Only that one writes here: a
/// try that lost the scratch leaves this as it was (its writes go to the
/// scratch and a counter, map memory), and a try reads only `attempt`,
/// never the loop's index, so every end state of this context is one a
/// single try reaches from the start. The verifier follows the callback as
/// if it ran once (Linux 6.1) or until its state stops changing (later
/// kernels): either way it sees every outcome the run can have. (Unlike
/// [`Walk`], whose end states take many iterations to reach.)
#[repr(C)]
struct Tries<A> {
    s: *mut Scratch,
    /// 1 once a try kept the scratch; whole words, so that the verifier
    /// knows the value and a later kernel's next walk of the callback
    /// stops at once. The outcome, from here to `resolved`, is five words
    /// ([`judge_holding`] zeroes them as such).
    done: u64,
    /// 1 where that try found the operation not the process's own.
    pass: u64,
    verdict: Verdict,
    flags: u64,
    resolved: i64,
    attempt: A,
}

// The outcome's five words, as [`judge_holding`] zeroes them.
const _: () = assert!(
    core::mem::offset_of!(Tries<FileTry>, resolved)
        == core::mem::offset_of!(Tries<FileTry>, done) + 32
        && size_of::<Verdict>() == 8
);

/// One try, the body of a `bpf_loop` callback over [`Tries`] (the
/// verifier checks the resolution and the judgement once per kind of
/// hook, not once per try): 1, which stops the loop, once a try ends with
/// the scratch still held ([`hold`]). The callbacks are one plain function
/// per attempt: a generic `extern "C"` one got function information the
/// verifier read as another function's ("reg type unsupported for
/// arg#0").
#[inline(always)]
fn one_try<A: Attempt>(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Tries<A>`, and `s` its scratch, both
    // live for the run.
    let t = unsafe { &mut *(ctx as *mut Tries<A>) };
    // For the verifiers that walk a callback again after it stopped the
    // loop (6.7 on): that walk ends here. A run never comes back after a
    // 1, and 6.1's verifier, which never walks it, may drop it as dead.
    if t.done != 0 {
        return 1;
    }
    // SAFETY: as above.
    let s = unsafe { &mut *t.s };
    let tid = hold(s);
    let judged = t.attempt.attempt(s);
    if !held(s, tid) {
        if index + 1 < u64::from(RUN_TRIES) {
            count_atomic(&PAL_LSM_STATS, direction::LOCAL, reason::LSM_INTERLEAVED, 0);
        }
        return 0;
    }
    match judged {
        Judged::Verdict(v, flags, resolved) => {
            t.verdict = v;
            t.flags = u64::from(flags);
            t.resolved = resolved;
        }
        Judged::Pass => t.pass = 1,
    }
    t.done = 1;
    1
}

extern "C" fn file_try(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    one_try::<FileTry>(index, ctx)
}

extern "C" fn path_try(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    one_try::<PathTry>(index, ctx)
}

/// Runs `attempt` until a try ends with the scratch still held ([`hold`]),
/// at most [`RUN_TRIES`] times, then gives [`interleaved`]'s verdict for
/// `set`; with the thread's id. Each try after the first is counted as
/// `lsm_interleaved`.
#[inline(always)]
fn judge_holding<A: Attempt>(
    s: &mut Scratch,
    set: u32,
    attempt: A,
    step: LoopStep,
) -> (Judged, u64) {
    let mut t = MaybeUninit::<Tries<A>>::uninit();
    let at = t.as_mut_ptr();
    // SAFETY: each field is written before the value is used, in place
    // (moved out of the `MaybeUninit`, its zeroed words were zeroed again
    // at the new place), and the outcome's five words (`done` to
    // `resolved`, all zero) word by word: written as a struct they became
    // a call to `memset`, a byte loop the verifier walks.
    let t = unsafe {
        addr_of_mut!((*at).s).write(addr_of_mut!(*s));
        addr_of_mut!((*at).attempt).write(attempt);
        zero_words(addr_of_mut!((*at).done), 5);
        &mut *at
    };
    run_loop(RUN_TRIES, step, t);
    // The id [`hold`] marks with.
    let tid = bpf_get_current_pid_tgid() & 0xffff_ffff;
    // SAFETY: a field of the context the callback wrote, read after it.
    let (done, pass) = unsafe { (read_volatile(&t.done), read_volatile(&t.pass)) };
    if done == 0 {
        let (v, flags) = interleaved(set);
        return (Judged::Verdict(v, flags, -1), tid);
    }
    if pass != 0 {
        return (Judged::Pass, tid);
    }
    (Judged::Verdict(t.verdict, t.flags as u8, t.resolved), tid)
}

// Offsets into kernel structures, from the running kernel's BTF (set by
// the loader; `ebpf_common::lsm::globals`). Read volatile: the compiler
// must not fold the zeros it sees here.
#[unsafe(no_mangle)]
static PAL_OFF_FILE_F_PATH: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_FILE_F_MODE: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_FILE_F_FLAGS: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_FILE_F_INODE: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_INODE_I_UID: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_INODE_I_MODE: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_BPRM_FILE: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_TASK_MM: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_MM_EXE_FILE: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_TASK_FS: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_FS_ROOT: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_PATH_MNT: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_PATH_DENTRY: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_D_PARENT: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_D_NAME_LEN: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_D_NAME: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_D_INODE: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_MNT_ROOT: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_MOUNT_MNT: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_MOUNT_PARENT: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_MOUNTPOINT: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_D_SB: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_SB_MOUNTS: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_MOUNT_SB_LINK: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_MOUNT_SB_NEXT: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_MOUNT_NS: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_TASK_NSPROXY: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_NSPROXY_MNT_NS: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_TASK_CRED: u32 = 0;
#[unsafe(no_mangle)]
static PAL_OFF_TASK_REAL_CRED: u32 = 0;

/// How many of a filesystem's mounts in one mount namespace an inode
/// hook tries (a pod sees its root filesystem once; a host filesystem a
/// few times, as bind-mounted files and volumes), and how many mounts of
/// the filesystem, in every namespace, it looks through to find them.
const MOUNT_CANDIDATES: usize = 8;
/// How many mounts of other namespaces, or detached ones, it tries where
/// none of the process's own reaches the dentry.
const FOREIGN_CANDIDATES: usize = 4;
/// How many of the roots of the mounts the kernel keeps to itself it
/// notes (overlayfs's clones of its upper layer and lower layers).
const INTERNAL_ROOTS: usize = 8;

/// `MNT_NS_INTERNAL`, the namespace of mounts the kernel keeps to itself
/// (`ERR_PTR(-EINVAL)`): overlayfs's clones of its layers among them.
const MNT_NS_INTERNAL: u64 = (-22i64) as u64;
const MOUNT_SCAN: u32 = 4096;

const EPERM: i32 = 1;

#[inline(always)]
fn offset(global: &u32) -> usize {
    // SAFETY: a read of our own read-only global.
    unsafe { read_volatile(global) as usize }
}

/// A field of a kernel structure behind a BTF pointer: one load the
/// verifier checks against the kernel's BTF.
#[inline(always)]
unsafe fn field<T: Copy>(base: *const u8, off: usize) -> T {
    // SAFETY: the caller passes a BTF pointer and a BTF-derived offset.
    unsafe { read_volatile(base.add(off) as *const T) }
}

/// The pod's cgroup id and rule sets, if the current process is in a pod
/// with rules: its own cgroup, or an ancestor at a level pods live at.
#[inline(always)]
fn pod_sets() -> Option<(u64, PodSets)> {
    // SAFETY: helpers without pointer arguments.
    let own = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a hash lookup; the value is copied out at once.
    if let Some(sets) = unsafe { PAL_LSM_PODS.get(&own) } {
        return Some((own, *sets));
    }
    let config = PAL_LSM_CONFIG.get(0)?;
    for i in 0..CGROUP_LEVELS {
        let level = config.levels[i];
        if level == 0 {
            break;
        }
        // SAFETY: as above.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 || id == own {
            continue;
        }
        // SAFETY: as above.
        if let Some(sets) = unsafe { PAL_LSM_PODS.get(&id) } {
            return Some((id, *sets));
        }
    }
    None
}

/// A `bpf_loop` callback: the iteration's index and the caller's
/// context; 0 goes on, 1 stops.
type LoopStep = extern "C" fn(u64, *mut core::ffi::c_void) -> i64;

/// Runs `step` up to `n` times over `ctx` with `bpf_loop`: the verifier
/// checks the callback once, whatever `n`.
#[inline(always)]
fn run_loop<T>(n: u32, step: LoopStep, ctx: &mut T) {
    // SAFETY: a callback of the type `bpf_loop` calls, and a context that
    // outlives the call.
    unsafe { generated::bpf_loop(n, step as *mut core::ffi::c_void, (ctx as *mut T).cast(), 0) };
}

/// What [`pattern_byte`] and [`pattern_slot`] read, where the automaton's
/// states are kept, and what the slots chose.
#[repr(C)]
struct PatternRun {
    path: *const u8,
    set: *const PatternSet,
    states: [u64; PATTERN_WORDS],
    which: usize,
    renamed_dir: bool,
    /// In the scratch: see [`zero_words`].
    choice: *mut SlotChoice,
}

/// Zeroes `words` words at `at` one by one: LLVM's BPF backend turns
/// zeroed structures and adjacent zero stores into calls to `memset`, a
/// byte loop the verifier walks through on every way into it.
///
/// # Safety
/// `at` is valid for `words` aligned `u64` writes.
#[inline(always)]
unsafe fn zero_words(at: *mut u64, words: usize) {
    for i in 0..words {
        // SAFETY: the caller's.
        unsafe { at.add(i).write_volatile(0) };
    }
}

/// One byte of the path through the set's patterns (a `bpf_loop`
/// callback: the verifier checks it once, not once per byte).
extern "C" fn pattern_byte(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `PatternRun`; `path` points to the
    // scratch's path buffer, `set` to a map value, both live for the run.
    unsafe {
        let run = &mut *(ctx as *mut PatternRun);
        let byte = *run.path.add((index as usize) & (PATH_MAX - 1));
        (*run.set).step(&mut run.states, byte);
        i64::from(!PatternSet::any_live(&run.states))
    }
}

/// One slot of the set considered once the path is read (a `bpf_loop`
/// callback, for the same reason).
extern "C" fn pattern_slot(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: as in `pattern_byte`.
    unsafe {
        let run = &mut *(ctx as *mut PatternRun);
        (*run.set).consider(
            index as usize,
            &run.states,
            run.which,
            run.renamed_dir,
            &mut *run.choice,
        );
    }
    0
}

/// The deciding ordinary pattern's verdict and the strictest guard
/// pattern's (for a directory renamed, `renamed_dir`) for the path of
/// `len` bytes (without its NUL) in the scratch, where patterns of set
/// `set` match it.
#[inline(always)]
fn pattern_verdicts(
    s: &mut Scratch,
    set: u32,
    len: usize,
    which: usize,
    renamed_dir: bool,
) -> (Option<Verdict>, Option<Verdict>) {
    // SAFETY: a hash lookup; the value stays valid for this run (RCU).
    let Some(patterns) = (unsafe { PAL_LSM_PATTERN.get(&set) }) else {
        return (None, None);
    };
    // Word by word: copied whole, or zeroed first, the states became a
    // call to `memmove` or `memset` (a byte loop the verifier walks).
    // SAFETY: reads of a map value that stays valid for this run.
    let states = core::array::from_fn(|w| unsafe { read_volatile(&patterns.start[w]) });
    // SAFETY: `SlotChoice` is word-aligned, whole words, valid as zeros.
    unsafe {
        zero_words(addr_of_mut!(s.choice).cast(), size_of::<SlotChoice>() / 8);
    }
    let mut run = PatternRun {
        path: s.path.as_ptr(),
        set: patterns,
        states,
        which,
        renamed_dir,
        choice: addr_of_mut!(s.choice),
    };
    run_loop((len & (PATH_MAX - 1)) as u32, pattern_byte, &mut run);
    if PatternSet::any_live(&run.states) {
        run_loop(
            patterns.count.min(MAX_PATTERNS as u32),
            pattern_slot,
            &mut run,
        );
    }
    s.choice.verdicts()
}

/// The verdict of set `set` for the path `bpf_d_path` left in `s`
/// (`resolved` is its return: the length with the NUL, or an error).
/// The most specific trie entry decides, unless it is not a file's or a
/// directory name's own and one of the set's patterns matches: then the
/// pattern does. For a directory renamed (`renamed_dir`), a guard pattern
/// then raises that decision where it is stricter, whatever the entry.
#[inline(always)]
fn judge(
    s: &mut Scratch,
    set: u32,
    resolved: i64,
    which: usize,
    renamed_dir: bool,
) -> (Verdict, u8) {
    let (v, flags, own) = judge_entry(s, set & SET_ID_MASK, resolved, which);
    if set & HAS_PATTERNS == 0 || resolved <= 0 || (own && !renamed_dir) {
        return (v, flags);
    }
    let (pattern, guard) = pattern_verdicts(
        s,
        set & SET_ID_MASK,
        resolved as usize - 1,
        which,
        renamed_dir,
    );
    let (v, flags) = match pattern {
        Some(p) if !own => (p, 0),
        _ => (v, flags),
    };
    match guard {
        Some(g) if g.strictness() > v.strictness() => (g, 0),
        _ => (v, flags),
    }
}

/// The verdict of a rule's pair (read, write) for `which`, chosen as a
/// value: indexed by a `which` known only at run time (a try's, read from
/// its context), the pair's copy on the stack was addressed with a bit
/// or'ed into the stack pointer, which the verifier refuses. Both are read
/// (volatile, so that the choice cannot become one of addresses again).
#[inline(always)]
fn of_pair(pair: &[Verdict; 2], which: usize) -> Verdict {
    // SAFETY: reads of the two elements of a reference.
    let (read, write) = unsafe { (read_volatile(&pair[0]), read_volatile(&pair[1])) };
    if which & 1 == 0 { read } else { write }
}

/// The most specific trie entry's verdict, its event flags, and whether
/// that entry is a file's own.
#[inline(always)]
fn judge_entry(s: &mut Scratch, set: u32, resolved: i64, which: usize) -> (Verdict, u8, bool) {
    s.set = set;
    if resolved <= 0 {
        // Unresolvable (deeper or longer than PATH_MAX): the default
        // decides if it blocks; otherwise it is reported, never silent.
        s.prefixlen = 32;
        let key = addr_of_mut!(*s) as *const Key<RuleData>;
        // SAFETY: `Scratch` starts with the layout of the key.
        let default = unsafe { PAL_LSM_RULES.get(&*key) }
            .map(|r| of_pair(&r.direct, which))
            .unwrap_or_default();
        let v = if default.action == action::BLOCK {
            default
        } else {
            Verdict {
                action: action::AUDIT,
                flags: verdict_flags::DEFAULT,
                ..default
            }
        };
        return (v, event_flags::UNRESOLVED, false);
    }
    let len = resolved as usize;
    let visible = if len > KEY_PATH_BYTES {
        KEY_PATH_BYTES
    } else {
        len
    };
    s.prefixlen = 32 + 8 * visible as u32;
    let key = addr_of_mut!(*s) as *const Key<RuleData>;
    // SAFETY: `Scratch` starts with the layout of the key.
    let Some(rule) = (unsafe { PAL_LSM_RULES.get(&*key) }) else {
        // A set without its root entry is being retired: nothing to judge.
        return (Verdict::default(), 0, false);
    };
    let rule = *rule;
    if rule.kind != entry_kind::DIR {
        // A directory's name carries its patterns, as a file's entry does.
        let own = rule.kind == entry_kind::FILE || rule.kind == entry_kind::DIR_NAME;
        return (of_pair(&rule.direct, which), 0, own);
    }
    // A non-recursive directory covers its children: a '/' after its own
    // bytes means the path lies deeper. The rest of the key's path is
    // copied to a fixed place first, so that the scan reads at constant
    // offsets, and scanned by a `bpf_loop` callback: unrolled, the scan
    // was a few thousand instructions the verifier walked through on every
    // way into it.
    let end = if len - 1 > KEY_PATH_BYTES {
        KEY_PATH_BYTES
    } else {
        len - 1
    };
    let start = rule.len as usize;
    let rest = end.saturating_sub(start);
    s.tail_slash = 0;
    // SAFETY: reads our own scratch (`start` is at most the key's length);
    // a fault would leave `tail` zeroed, which reads as "no '/'".
    let copied = unsafe {
        generated::bpf_probe_read_kernel(
            s.tail.as_mut_ptr().cast(),
            KEY_PATH_BYTES as u32,
            s.path.as_ptr().wrapping_add(start).cast(),
        )
    };
    if copied == 0 {
        let mut scan = SlashScan {
            s: addr_of_mut!(*s),
        };
        run_loop(rest as u32, slash_step, &mut scan);
    }
    if s.tail_slash != 0 {
        return (of_pair(&rule.deeper, which), 0, false);
    }
    if len - 1 > KEY_PATH_BYTES {
        // The rest of the path is past the key: take the stricter.
        let (d, p) = (of_pair(&rule.direct, which), of_pair(&rule.deeper, which));
        let v = if p.action > d.action { p } else { d };
        return (v, event_flags::AMBIGUOUS, false);
    }
    (of_pair(&rule.direct, which), 0, false)
}

/// The scratch whose `tail` [`slash_step`] scans; the answer goes to the
/// scratch too (see [`Walk`] on why not to the caller's stack).
#[repr(C)]
struct SlashScan {
    s: *mut Scratch,
}

/// One byte of the scratch's `tail`: stops at a '/'. A `bpf_loop`
/// callback.
extern "C" fn slash_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `SlashScan`, whose `s` points to this
    // run's scratch.
    let s = unsafe { &mut *(*(ctx as *mut SlashScan)).s };
    // The index is below the key's length; the mask keeps the read inside
    // the scratch for the verifier (`walk` follows `tail`).
    // SAFETY: as above.
    let byte = unsafe { *s.tail.as_ptr().add((index as usize) & 0xff) };
    if byte == b'/' {
        s.tail_slash = 1;
        return 1;
    }
    0
}

#[inline(always)]
fn take_token(s: &mut Scratch, now: u64) -> bool {
    let elapsed = now.saturating_sub(s.last_ns);
    s.last_ns = now;
    let cap = event_rate::BURST * event_rate::COST_NS;
    s.credit_ns = if elapsed >= cap {
        cap
    } else {
        (s.credit_ns + elapsed).min(cap)
    };
    if s.credit_ns < event_rate::COST_NS {
        return false;
    }
    s.credit_ns -= event_rate::COST_NS;
    true
}

#[inline(always)]
fn count_decision(v: &Verdict, on: u8) {
    let key = DecisionKey {
        policy: v.policy,
        hook: on,
        action: v.action,
        flags: v.flags & verdict_flags::DEFAULT,
        _pad: 0,
    };
    if let Some(n) = PAL_LSM_DECIDE.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value, valid for this run and aligned; atomic,
        // as other runs on this CPU may count between a preempted run's
        // load and store ([`count_atomic`]).
        unsafe { add(n, 1) };
        return;
    }
    if PAL_LSM_DECIDE
        .insert(&key, &1, u64::from(BPF_NOEXIST))
        .is_err()
        && let Some(n) = PAL_LSM_DECIDE.get_ptr_mut(&key)
    {
        // SAFETY: as above (another CPU created it in between).
        unsafe { add(n, 1) };
    }
}

#[inline(always)]
fn report(s: &mut Scratch, run: Run, v: &Verdict, on: u8, what: u8, flags: u8, len: i64) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !take_token(s, now) {
        count_atomic(
            &PAL_LSM_STATS,
            direction::LOCAL,
            reason::EVENT_RATE_LIMITED,
            0,
        );
        return;
    }
    let Some(mut entry) = PAL_LSM_EVENTS.reserve::<LsmEvent>(0) else {
        count_atomic(&PAL_LSM_STATS, direction::LOCAL, reason::EVENT_LOST, 0);
        return;
    };
    let e = entry.as_mut_ptr();
    let cut = if len > EVENT_PATH_BYTES as i64 {
        event_flags::PATH_CUT
    } else {
        0
    };
    // SAFETY: `e` is our reserved ring buffer record; every field is
    // written before it is submitted.
    unsafe {
        (*e).timestamp_ns = now;
        (*e).cgroup = run.cgroup;
        (*e).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*e).uid = bpf_get_current_uid_gid() as u32;
        (*e).policy = v.policy;
        (*e).hook = on;
        (*e).op = what;
        (*e).action = v.action;
        (*e).flags = flags
            | cut
            | if v.flags & verdict_flags::DEFAULT != 0 {
                event_flags::DEFAULT
            } else {
                0
            };
        bpf_get_current_comm(addr_of_mut!((*e).comm).cast(), 16);
        // A failed read leaves the path empty: the helper zeroes what it
        // could not read (zeroing it here was a call to `memset`, a loop
        // the verifier walked through on every way into this).
        generated::bpf_probe_read_kernel(
            addr_of_mut!((*e).path).cast(),
            EVENT_PATH_BYTES as u32,
            s.path.as_ptr().cast(),
        );
        // The decision was the run's own; the path copied after it may be
        // another run's, taken over meanwhile.
        if !held(s, run.tid) {
            (*e).flags |= event_flags::INTERLEAVED;
        }
    }
    entry.submit(0);
}

/// Whom a run judges for: the pod's cgroup, and the thread that holds the
/// scratch ([`hold`]).
#[derive(Clone, Copy)]
struct Run {
    cgroup: u64,
    tid: u64,
}

/// Applies `v` to the operation: 0 lets it through, `-EPERM` fails it.
#[inline(always)]
fn enforce(
    s: &mut Scratch,
    run: Run,
    v: Verdict,
    flags: u8,
    (on, what): (u8, u8),
    owner: impl FnOnce() -> u32,
    len: i64,
) -> i32 {
    let mut v = v;
    if v.flags & verdict_flags::OWNER_ONLY != 0 && owner() == bpf_get_current_uid_gid() as u32 {
        v.action = action::ALLOW;
    }
    match v.action {
        action::ALLOW => {
            count_atomic(&PAL_LSM_STATS, direction::LOCAL, reason::LSM_ALLOW, 0);
            0
        }
        action::AUDIT => {
            count_atomic(&PAL_LSM_STATS, direction::LOCAL, reason::LSM_AUDIT, 0);
            count_decision(&v, on);
            report(s, run, &v, on, what, flags, len);
            0
        }
        _ => {
            count_atomic(&PAL_LSM_STATS, direction::LOCAL, reason::LSM_BLOCK, 0);
            count_decision(&v, on);
            report(s, run, &v, on, what, flags, len);
            -EPERM
        }
    }
}

/// The set for the current process's executable (`fromSource`), or `set`:
/// the executable's path is resolved into the scratch and looked up
/// whole. For an exec, the current process is still the caller.
#[inline(always)]
fn source_set(s: &mut Scratch, set: u32) -> u32 {
    // SAFETY: the current task, and fields at offsets from the kernel's
    // BTF; `mm` is NULL for kernel threads, `exe_file` may be NULL.
    let exe: *const u8 = unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let mm: *const u8 = field(task, offset(&PAL_OFF_TASK_MM));
        if mm.is_null() {
            return set;
        }
        field(mm, offset(&PAL_OFF_MM_EXE_FILE))
    };
    if exe.is_null() {
        return set;
    }
    // SAFETY: `exe + f_path` is the `struct path` inside that file.
    let resolved = unsafe {
        let p = exe.add(offset(&PAL_OFF_FILE_F_PATH)) as *mut path;
        bpf_d_path(p, s.path.as_mut_ptr().cast(), PATH_MAX as u32)
    };
    source_lookup(s, set, resolved)
}

/// The source set of the executable whose path (`resolved` bytes with
/// the NUL) is in the scratch, or `set`.
#[inline(always)]
fn source_lookup(s: &mut Scratch, set: u32, resolved: i64) -> u32 {
    // Source paths fit a key whole (rules are at most MAX_RULE_PATH).
    if resolved <= 0 || resolved as usize > KEY_PATH_BYTES {
        return set;
    }
    s.set = set & SET_ID_MASK;
    s.prefixlen = 32 + 8 * resolved as u32;
    let key = addr_of_mut!(*s) as *const Key<RuleData>;
    // SAFETY: `Scratch` starts with the layout of the key.
    match unsafe { PAL_LSM_SOURCES.get(&*key) } {
        Some(&own) => own,
        None => set,
    }
}

/// Resolves `file`'s path into the scratch and judges it in `set`; a
/// directory (`dir`) by its own rules, as what lies in it.
#[inline(always)]
fn check(
    file: *const u8,
    dir: bool,
    set: u32,
    which: usize,
    (on, what): (u8, u8),
    cgroup: u64,
) -> i32 {
    let Some(s) = PAL_LSM_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU array value, used by this CPU for this run (and,
    // where another run takes it meanwhile, tried again: [`hold`]).
    let s = unsafe { &mut *s };
    let (judged, tid) = judge_holding(
        s,
        set,
        FileTry {
            file,
            set,
            which,
            dir,
        },
        file_try,
    );
    let owner = || {
        // SAFETY: `file` is the hook's `struct file *`; the offsets come
        // from the kernel's BTF.
        unsafe {
            let inode: *const u8 = field(file, offset(&PAL_OFF_FILE_F_INODE));
            field(inode, offset(&PAL_OFF_INODE_I_UID))
        }
    };
    settle(s, judged, Run { cgroup, tid }, (on, what), owner)
}

/// Applies a run's judgement: nothing for an operation not the process's
/// own, else the verdict, with an unresolved or ambiguous path counted.
#[inline(always)]
fn settle(
    s: &mut Scratch,
    judged: Judged,
    run: Run,
    (on, what): (u8, u8),
    owner: impl FnOnce() -> u32,
) -> i32 {
    let Judged::Verdict(v, flags, resolved) = judged else {
        return 0;
    };
    if flags & (event_flags::UNRESOLVED | event_flags::AMBIGUOUS) != 0 {
        count_atomic(&PAL_LSM_STATS, direction::LOCAL, reason::LSM_UNRESOLVED, 0);
    }
    enforce(s, run, v, flags, (on, what), owner, resolved)
}

/// A try of [`check`]: `file`'s path, by `bpf_d_path`, judged in `set`.
#[repr(C)]
struct FileTry {
    file: *const u8,
    set: u32,
    which: usize,
    dir: bool,
}

impl Attempt for FileTry {
    #[inline(always)]
    fn attempt(&self, s: &mut Scratch) -> Judged {
        let set = if self.set & HAS_SOURCES != 0 {
            source_set(s, self.set & !HAS_SOURCES)
        } else {
            self.set
        };
        // SAFETY: `file + f_path` is the `struct path` inside the hook's
        // file (the offset from the kernel's BTF); the buffer is the
        // scratch's.
        let resolved = unsafe {
            let p = self.file.add(offset(&PAL_OFF_FILE_F_PATH)) as *mut path;
            bpf_d_path(p, s.path.as_mut_ptr().cast(), PATH_MAX as u32)
        };
        // Opening a directory reads what is in it, which its own rules
        // (keyed `/etc/ssl/`) speak for, not its parent's.
        let resolved = if self.dir {
            as_dir(s, resolved).unwrap_or(resolved)
        } else {
            resolved
        };
        // Opening renames nothing: no guard pattern.
        let (v, flags) = judge(s, set, resolved, self.which, false);
        Judged::Verdict(v, flags, resolved)
    }
}

const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;

/// Whether the `struct inode` at `inode` is a directory's.
#[inline(always)]
fn inode_is_dir(inode: u64) -> bool {
    inode != 0 && peek::<u16>(inode + offset(&PAL_OFF_INODE_I_MODE) as u64) & S_IFMT == S_IFDIR
}

/// Turns the path of `resolved` bytes (with its NUL) in the scratch into
/// a directory's own key, `/etc/ssl` into `/etc/ssl/`, as directory rules
/// are keyed; its new length. `None` for the root (already `/`), for an
/// unresolved path and where no byte is left for the `/`.
#[inline(always)]
fn as_dir(s: &mut Scratch, resolved: i64) -> Option<i64> {
    if resolved <= 2 || resolved >= PATH_MAX as i64 {
        return None;
    }
    let end = resolved as usize;
    s.path[(end - 1) & (PATH_MAX - 1)] = b'/';
    s.path[end & (PATH_MAX - 1)] = 0;
    Some(resolved + 1)
}

/// The current task's address, only ever read through [`peek`].
#[inline(always)]
fn bpf_get_current_task_btf_u64() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// A kernel word read without a BTF type: 0 if it cannot be read.
#[inline(always)]
fn peek<T: Copy + Default>(at: u64) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel(at as *const T) }.unwrap_or_default()
}

/// The state of one walk up the dentries, for [`walk_step`]. Where the
/// path written so far starts, and how the walk ended, are kept in the
/// scratch (map memory), not here: Linux 6.1's verifier follows a
/// `bpf_loop` callback for one iteration only, so it would take values on
/// the caller's stack for constants after the loop and prune the branches
/// that read them.
#[repr(C)]
struct Walk {
    s: *mut Scratch,
    dentry: u64,
    mnt: u64,
    root_dentry: u64,
    root_mnt: u64,
    /// Whether a file system's root that is not the mount's ends the walk
    /// unresolved (an inode hook trying a candidate mount) or as the root
    /// (the path hooks: a pseudo file's dentry, a memfd's or a pipe's, is
    /// its own parent, and has always resolved to `/`).
    strict: bool,
}

mod walk_state {
    pub const RUNNING: u64 = 0;
    pub const DONE: u64 = 1;
    pub const FAILED: u64 = 2;
    /// A strict walk reached a file system's root that is not the mount's:
    /// the dentry does not lie under that mount.
    pub const ELSEWHERE: u64 = 3;
}

/// One level of the walk: the current dentry's name is written in front
/// of the path so far, and the walk moves to its parent (across a mount
/// point where it is the top of a mount). A `bpf_loop` callback: the
/// verifier checks it once, whatever the depth.
extern "C" fn walk_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Walk`, whose `s` points to this run's
    // scratch.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    // SAFETY: as above.
    let s = unsafe { &mut *w.s };
    let (d, m) = (w.dentry, w.mnt);
    if d == 0 || m == 0 {
        // A pointer that could not be read: never taken for the root.
        s.walk_state = walk_state::FAILED;
        return 1;
    }
    if d == w.root_dentry && m == w.root_mnt {
        s.walk_state = walk_state::DONE;
        return 1;
    }
    let mnt_root: u64 = peek(m + offset(&PAL_OFF_MNT_ROOT) as u64);
    if d == mnt_root {
        // The top of a mount: go on from where it is mounted, in the next
        // iteration, which checks that place again (it may be the root,
        // or the top of another mount stacked there).
        let mount = m - offset(&PAL_OFF_MOUNT_MNT) as u64;
        let parent: u64 = peek(mount + offset(&PAL_OFF_MOUNT_PARENT) as u64);
        if parent == mount {
            s.walk_state = walk_state::DONE;
            return 1;
        }
        w.dentry = peek(mount + offset(&PAL_OFF_MOUNTPOINT) as u64);
        w.mnt = if parent == 0 {
            0
        } else {
            parent + offset(&PAL_OFF_MOUNT_MNT) as u64
        };
        return 0;
    }
    let parent: u64 = peek(d + offset(&PAL_OFF_D_PARENT) as u64);
    if parent == d {
        // A file system's root that is not the mount's: for an inode
        // hook's candidate, the dentry does not lie under this mount.
        s.walk_state = if w.strict {
            walk_state::ELSEWHERE
        } else {
            walk_state::DONE
        };
        return 1;
    }
    let len: u32 = peek(d + offset(&PAL_OFF_D_NAME_LEN) as u64);
    let name: u64 = peek(d + offset(&PAL_OFF_D_NAME) as u64);
    if len == 0 || len > 255 || s.walk_at < u64::from(len) + 1 {
        s.walk_state = walk_state::FAILED;
        return 1;
    }
    let at = s.walk_at - u64::from(len);
    // Read afresh and masked: the compiler knows `len` is at most 255 and
    // would drop a mask of the value it holds, but the verifier needs one.
    // SAFETY: a read of a local.
    let size = unsafe { read_volatile(&len) } & 0xff;
    // SAFETY: the destination lies in the walk buffer (a masked start, at
    // most 255 bytes, with 256 bytes of room past PATH_MAX).
    let read = unsafe {
        generated::bpf_probe_read_kernel(
            s.walk
                .as_mut_ptr()
                .wrapping_add((at & (PATH_MAX as u64 - 1)) as usize)
                .cast(),
            size,
            name as *const core::ffi::c_void,
        )
    };
    if read != 0 {
        s.walk_state = walk_state::FAILED;
        return 1;
    }
    let at = at - 1;
    s.walk[(at & (PATH_MAX as u64 - 1)) as usize] = b'/';
    s.walk_at = at;
    w.dentry = parent;
    0
}

/// Builds the path of `dentry` under the mount `mnt` (a `struct vfsmount`)
/// into the scratch, as `bpf_d_path` would: component by component up to
/// the current process's root, crossing mount points. Returns the length
/// with the NUL, or -1 where the path is deeper than [`WALK_DEPTH`] levels
/// or longer than PATH_MAX: the walk covers every path `bpf_d_path` could.
#[inline(always)]
fn walk_path(s: &mut Scratch, dentry: u64, mnt: u64) -> i64 {
    walk_path_from(s, dentry, mnt, false)
}

/// [`walk_path`], `strict`: failing where the dentry does not lie under
/// `mnt` (see [`Walk`]).
#[inline(always)]
fn walk_path_from(s: &mut Scratch, dentry: u64, mnt: u64, strict: bool) -> i64 {
    let task = bpf_get_current_task_btf_u64();
    let fs: u64 = peek(task + offset(&PAL_OFF_TASK_FS) as u64);
    let root = fs + offset(&PAL_OFF_FS_ROOT) as u64;
    s.walk[PATH_MAX - 1] = 0;
    s.walk_at = (PATH_MAX - 1) as u64;
    s.walk_state = walk_state::RUNNING;
    let mut w = Walk {
        s: addr_of_mut!(*s),
        dentry,
        mnt,
        root_dentry: peek(root + offset(&PAL_OFF_PATH_DENTRY) as u64),
        root_mnt: peek(root + offset(&PAL_OFF_PATH_MNT) as u64),
        strict,
    };
    run_loop(WALK_DEPTH as u32, walk_step, &mut w);
    if s.walk_state != walk_state::DONE {
        return -1;
    }
    let mut at = s.walk_at & (PATH_MAX as u64 - 1);
    if at == (PATH_MAX - 1) as u64 {
        // The root itself.
        at -= 1;
        s.walk[at as usize] = b'/';
    }
    let n = (PATH_MAX as u64 - at) & 0x1fff;
    let pos = at as usize;
    // SAFETY: both ranges lie in the scratch (n <= PATH_MAX; the source
    // start is masked into the walk buffer).
    let copied = unsafe {
        generated::bpf_probe_read_kernel(
            s.path.as_mut_ptr().cast(),
            n as u32,
            s.walk.as_ptr().wrapping_add(pos & (PATH_MAX - 1)).cast(),
        )
    };
    if copied != 0 { -1 } else { n as i64 }
}

mod mount_search {
    pub const RUNNING: u64 = 0;
    /// Every mount of the filesystem was looked at.
    pub const DONE: u64 = 1;
    /// A link that could not be read.
    pub const MORE: u64 = 2;
}

/// The state of one search through a filesystem's mounts, for
/// [`mount_step`]; what it finds goes to the scratch, as [`Walk`]'s does.
#[repr(C)]
struct MountSearch {
    s: *mut Scratch,
    /// The list's head (`&sb->s_mounts`), where a `list_head` list ends.
    head: u64,
    link: u64,
    ns: u64,
    dentry: u64,
}

/// One mount of the file system: kept as a candidate if it could hold the
/// dentry, first those of the process's mount namespace; whether the
/// kernel keeps one to itself is noted. A `bpf_loop` callback.
extern "C" fn mount_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `MountSearch`, whose `s` points to this
    // run's scratch.
    let m = unsafe { &mut *(ctx as *mut MountSearch) };
    // SAFETY: as above.
    let s = unsafe { &mut *m.s };
    let link = m.link;
    let list_head = offset(&PAL_OFF_MOUNT_SB_LINK) != 0;
    if link == m.head || (link == 0 && !list_head) {
        s.mount_search = mount_search::DONE;
        return 1;
    }
    if link == 0 {
        // A `list_head` never holds NULL: the read failed.
        s.mount_search = mount_search::MORE;
        return 1;
    }
    let mount = link - offset(&PAL_OFF_MOUNT_SB_LINK) as u64;
    let vfsmount = mount + offset(&PAL_OFF_MOUNT_MNT) as u64;
    let ns: u64 = peek(mount + offset(&PAL_OFF_MOUNT_NS) as u64);
    if ns == MNT_NS_INTERNAL {
        let at = s.internal_found;
        if at < INTERNAL_ROOTS as u64 {
            s.internal_roots[(at as usize) & (INTERNAL_ROOTS - 1)] =
                peek(vfsmount + offset(&PAL_OFF_MNT_ROOT) as u64);
            s.internal_found = at + 1;
        }
    } else if ns == m.ns && could_hold(vfsmount, m.dentry) {
        // Past the candidates the search goes on: a mount the kernel
        // keeps to itself may come later in the list.
        let at = s.mounts_found;
        if at < MOUNT_CANDIDATES as u64 {
            s.mounts[(at as usize) & (MOUNT_CANDIDATES - 1)] = vfsmount;
            s.mounts_found = at + 1;
        } else {
            s.own_more = 1;
        }
    } else if ns != m.ns
        && s.foreign_found < FOREIGN_CANDIDATES as u64
        && could_hold(vfsmount, m.dentry)
    {
        // Another namespace's, or detached (`umount -l`, a tree a
        // process keeps a descriptor into): past the first few, left
        // unread (a node's file system holds every pod's bind mounts).
        let at = s.foreign_found;
        s.foreign[(at as usize) & (FOREIGN_CANDIDATES - 1)] = vfsmount;
        s.foreign_found = at + 1;
    }
    m.link = peek(mount + offset(&PAL_OFF_MOUNT_SB_NEXT) as u64);
    0
}

/// Whether the mount could hold `dentry`: a mount of one file (a pod's
/// `/etc/hosts`, a ConfigMap key) holds only that file. Kubernetes gives
/// every container a few such mounts from the node's file system.
#[inline(always)]
fn could_hold(vfsmount: u64, dentry: u64) -> bool {
    let root: u64 = peek(vfsmount + offset(&PAL_OFF_MNT_ROOT) as u64);
    root == dentry || dentry_is_dir(root)
}

/// Where an inode hook's dentry lies, for the current process.
enum Reach {
    /// Its path, of this length with the NUL, in the scratch.
    Path(i64),
    /// The kernel's own work, with borrowed credentials, in the tree of a
    /// mount it keeps to itself: overlayfs's copy-up.
    Kernels,
    /// Not known: under none of the mounts tried, more mounts than the
    /// search takes, or unreadable.
    Unknown,
}

/// The path of `dentry`, which an inode hook names without its mount,
/// from the current process's root: through the first of its file
/// system's mounts in the process's mount namespace that holds it (one
/// file seen through two such mounts is judged by the first path), else,
/// but for overlayfs's own work, through another namespace's or a
/// detached one.
#[inline(always)]
fn walk_from_a_mount(s: &mut Scratch, dentry: u64) -> Reach {
    let task = bpf_get_current_task_btf_u64();
    let nsproxy: u64 = peek(task + offset(&PAL_OFF_TASK_NSPROXY) as u64);
    let ns: u64 = peek(nsproxy + offset(&PAL_OFF_NSPROXY_MNT_NS) as u64);
    let sb: u64 = peek(dentry + offset(&PAL_OFF_D_SB) as u64);
    if nsproxy == 0 || ns == 0 || sb == 0 {
        return Reach::Unknown;
    }
    let head = sb + offset(&PAL_OFF_SB_MOUNTS) as u64;
    // Only the counts: the arrays are read below them (zeroing the arrays
    // was a call to `memset`, a loop the verifier walks).
    put(&mut s.mounts_found, 0);
    put(&mut s.foreign_found, 0);
    put(&mut s.own_more, 0);
    put(&mut s.internal_found, 0);
    s.mount_search = mount_search::RUNNING;
    let mut search = MountSearch {
        s: addr_of_mut!(*s),
        head,
        link: peek(head),
        ns,
        dentry,
    };
    run_loop(MOUNT_SCAN, mount_step, &mut search);
    if acting_for_another() && in_a_layer(s, dentry) {
        // Overlayfs writing its upper layer or work directory (a copy-up,
        // an attribute passed down) with borrowed credentials, in the tree
        // of its own clone of that layer's mount: the process's own
        // request on the overlay's path was judged. (Asked first: a node
        // can hold more mounts of its file system than the search reads.)
        return Reach::Kernels;
    }
    if s.mount_search != mount_search::DONE {
        return Reach::Unknown;
    }
    if let Some(reach) = first_holding(s, dentry, false) {
        return reach;
    }
    if s.own_more != 0 {
        return Reach::Unknown;
    }
    // Past the namespace's mounts (a tree detached with `umount -l`, or
    // another namespace's): the path from that tree's top, as `d_path`
    // gives it and as the path hooks resolve it there.
    first_holding(s, dentry, true).unwrap_or(Reach::Unknown)
}

/// Walks to `dentry` from the search's candidates in turn, the namespace's
/// own or (`foreign`) the others: the first under which it lies gives its
/// path; one under which the walk fails (too deep, unreadable) leaves it
/// unknown. `None` where none holds it.
#[inline(always)]
fn first_holding(s: &mut Scratch, dentry: u64, foreign: bool) -> Option<Reach> {
    let (n, found) = if foreign {
        (FOREIGN_CANDIDATES, s.foreign_found)
    } else {
        (MOUNT_CANDIDATES, s.mounts_found)
    };
    for i in 0..n {
        if i as u64 >= found {
            break;
        }
        let mnt = if foreign {
            s.foreign[i & (FOREIGN_CANDIDATES - 1)]
        } else {
            s.mounts[i & (MOUNT_CANDIDATES - 1)]
        };
        let resolved = walk_path_from(s, dentry, mnt, true);
        if resolved > 0 {
            return Some(Reach::Path(resolved));
        }
        if s.walk_state != walk_state::ELSEWHERE {
            return Some(Reach::Unknown);
        }
    }
    None
}

/// The state of one climb from a dentry towards its file system's root,
/// for [`layer_step`]; the answer goes to the scratch.
#[repr(C)]
struct LayerClimb {
    s: *mut Scratch,
    dentry: u64,
}

/// One level of the climb: whether the dentry is one of the kernel
/// mounts' roots or the directory holding one (overlayfs's work
/// directory is the upper layer's sibling). A `bpf_loop` callback.
extern "C" fn layer_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `LayerClimb`, whose `s` points to this
    // run's scratch.
    let c = unsafe { &mut *(ctx as *mut LayerClimb) };
    // SAFETY: as above.
    let s = unsafe { &mut *c.s };
    let d = c.dentry;
    if d == 0 {
        return 1;
    }
    for i in 0..INTERNAL_ROOTS {
        if i as u64 >= s.internal_found {
            break;
        }
        let root = s.internal_roots[i];
        if root == 0 {
            break;
        }
        // The directory holding the root, unless the root is its file
        // system's own (its own parent): that would be every file there.
        let holder: u64 = peek(root + offset(&PAL_OFF_D_PARENT) as u64);
        if d == root || (holder != root && d == holder) {
            s.in_layer = 1;
            return 1;
        }
    }
    let parent: u64 = peek(d + offset(&PAL_OFF_D_PARENT) as u64);
    if parent == d {
        return 1;
    }
    c.dentry = parent;
    0
}

/// Whether `dentry` lies in the tree of one of the mounts the kernel
/// keeps to itself on its file system (noted by the mount search), or in
/// the directory holding one's root.
#[inline(always)]
fn in_a_layer(s: &mut Scratch, dentry: u64) -> bool {
    if s.internal_found == 0 {
        return false;
    }
    s.in_layer = 0;
    let mut climb = LayerClimb {
        s: addr_of_mut!(*s),
        dentry,
    };
    run_loop(WALK_DEPTH as u32, layer_step, &mut climb);
    s.in_layer != 0
}

/// Whether the current process acts with borrowed credentials, as
/// overlayfs does when it writes its upper layer on a process's behalf.
#[inline(always)]
fn acting_for_another() -> bool {
    let task = bpf_get_current_task_btf_u64();
    let cred: u64 = peek(task + offset(&PAL_OFF_TASK_CRED) as u64);
    let real: u64 = peek(task + offset(&PAL_OFF_TASK_REAL_CRED) as u64);
    cred != real
}

/// Whether `file` lies on a mount the kernel keeps to itself
/// (`MNT_NS_INTERNAL`), as overlayfs's clones of its layers are: no
/// process can name a path on one.
#[inline(always)]
fn on_an_internal_mount(file: *const u8) -> bool {
    let (_, mnt) = path_parts(file as u64 + offset(&PAL_OFF_FILE_F_PATH) as u64);
    let mount = mnt - offset(&PAL_OFF_MOUNT_MNT) as u64;
    mnt != 0 && peek::<u64>(mount + offset(&PAL_OFF_MOUNT_NS) as u64) == MNT_NS_INTERNAL
}

/// The `fromSource` set for the current process on a path hook, where
/// `bpf_d_path` is not allowed: its executable's path comes from the same
/// walk, then the same lookup as on open.
#[inline(always)]
fn source_set_walked(s: &mut Scratch, set: u32) -> u32 {
    let task = bpf_get_current_task_btf_u64();
    let mm: u64 = peek(task + offset(&PAL_OFF_TASK_MM) as u64);
    if mm == 0 {
        return set;
    }
    let exe: u64 = peek(mm + offset(&PAL_OFF_MM_EXE_FILE) as u64);
    if exe == 0 {
        return set;
    }
    let (dentry, mnt) = path_parts(exe + offset(&PAL_OFF_FILE_F_PATH) as u64);
    let resolved = walk_path(s, dentry, mnt);
    source_lookup(s, set, resolved)
}

/// Judges a write that does not open the file (unlink, rename, link,
/// truncate, chmod, chown, mknod, mkdir, symlink, rmdir, an extended
/// attribute set) of `dentry` under mount `mnt` (`None`: an inode hook's,
/// which names none), in the file set; `ownerOnly` asks for the owner of
/// `owned`; `renamed`: a rename's old and new dentries (guard patterns
/// judge it if it moves a directory), read only for a process of a pod
/// with file rules.
#[inline(always)]
fn check_path(
    dentry: u64,
    mnt: Option<u64>,
    owned: u64,
    renamed: Option<(u64, u64)>,
    on: u8,
    what: u8,
) -> i32 {
    let Some((cgroup, sets)) = pod_sets() else {
        return 0;
    };
    if sets.file == 0 {
        return 0;
    }
    let Some(s) = PAL_LSM_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU array value, used by this CPU for this run (and,
    // where another run takes it meanwhile, tried again: [`hold`]).
    let s = unsafe { &mut *s };
    let renamed_dir = renamed.is_some_and(|(old, new)| a_directory_moves(old, new));
    let (judged, tid) = judge_holding(
        s,
        sets.file,
        PathTry {
            dentry,
            mnt: mnt.unwrap_or(0),
            has_mnt: mnt.is_some(),
            set: sets.file,
            renamed_dir,
        },
        path_try,
    );
    let owner = || {
        let inode: u64 = peek(owned + offset(&PAL_OFF_D_INODE) as u64);
        peek::<u32>(inode + offset(&PAL_OFF_INODE_I_UID) as u64)
    };
    settle(s, judged, Run { cgroup, tid }, (on, what), owner)
}

/// A try of [`check_path`]: the dentry's path, walked up from `mnt`
/// (where `has_mnt`) or from a mount found for it, judged in `set` as a
/// write.
#[repr(C)]
struct PathTry {
    dentry: u64,
    mnt: u64,
    has_mnt: bool,
    set: u32,
    renamed_dir: bool,
}

impl Attempt for PathTry {
    #[inline(always)]
    fn attempt(&self, s: &mut Scratch) -> Judged {
        let set = if self.set & HAS_SOURCES != 0 {
            source_set_walked(s, self.set & !HAS_SOURCES)
        } else {
            self.set
        };
        let resolved = if self.has_mnt {
            Some(walk_path(s, self.dentry, self.mnt))
        } else {
            match walk_from_a_mount(s, self.dentry) {
                Reach::Path(resolved) => Some(resolved),
                Reach::Kernels => None,
                // Judged as unresolved: by the default, and reported.
                Reach::Unknown => Some(-1),
            }
        };
        match resolved {
            Some(resolved) => {
                let (v, flags) = judge(s, set, resolved, op::WRITE, self.renamed_dir);
                Judged::Verdict(v, flags, resolved)
            }
            None => Judged::Pass,
        }
    }
}

/// The `mnt` and `dentry` of a `struct path *`.
#[inline(always)]
fn path_parts(path: u64) -> (u64, u64) {
    (
        peek(path + offset(&PAL_OFF_PATH_DENTRY) as u64),
        peek(path + offset(&PAL_OFF_PATH_MNT) as u64),
    )
}

/// A hook given one `struct path *` (argument 0), the earlier LSMs'
/// verdict at argument `ret`.
#[inline(always)]
fn on_path(ctx: &LsmContext, ret: usize, on: u8, what: u8) -> i32 {
    let path: u64 = ctx.arg(0);
    let previous: i32 = ctx.arg(ret);
    if previous != 0 {
        return previous;
    }
    let (dentry, mnt) = path_parts(path);
    check_path(dentry, Some(mnt), dentry, None, on, what)
}

/// Whether `dentry` is a directory's (a negative dentry, a name not made
/// yet, is not). Only renames ask: a directory renamed carries what lies
/// in it, where a pattern may no longer reach it (or into its reach); a
/// directory made or removed is empty, and a mode or owner changed moves
/// nothing, so guard patterns do not judge those.
#[inline(always)]
fn dentry_is_dir(dentry: u64) -> bool {
    inode_is_dir(peek(dentry + offset(&PAL_OFF_D_INODE) as u64))
}

/// Whether a rename moves a directory: the old name's, or the new one's,
/// which `RENAME_EXCHANGE` moves to the old name (a directory replaced
/// is empty, and judged alike).
#[inline(always)]
fn a_directory_moves(old_dentry: u64, new_dentry: u64) -> bool {
    dentry_is_dir(old_dentry) || dentry_is_dir(new_dentry)
}

/// A hook given a directory's `struct path *` and a name's dentry in it
/// (arguments 0 and 1), the earlier LSMs' verdict at argument `ret`. A
/// `new` name has no owner yet: `ownerOnly` asks for the directory's.
#[inline(always)]
fn in_dir(ctx: &LsmContext, ret: usize, new: bool, on: u8, what: u8) -> i32 {
    let dir: u64 = ctx.arg(0);
    let dentry: u64 = ctx.arg(1);
    let previous: i32 = ctx.arg(ret);
    if previous != 0 {
        return previous;
    }
    let (dir_dentry, mnt) = path_parts(dir);
    let owned = if new { dir_dentry } else { dentry };
    check_path(dentry, Some(mnt), owned, None, on, what)
}

#[lsm(hook = "path_unlink")]
pub fn pal_lsm_unlink(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 2, false, hook::PATH_UNLINK, event_op::UNLINK)
}

#[lsm(hook = "path_rename")]
pub fn pal_lsm_rename(ctx: LsmContext) -> i32 {
    let old_dir: u64 = ctx.arg(0);
    let old_dentry: u64 = ctx.arg(1);
    let new_dir: u64 = ctx.arg(2);
    let new_dentry: u64 = ctx.arg(3);
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    // Both names are written: the old one goes here, the new one (which
    // a rename replaces) in `pal_lsm_rename_to`, a program of its own so
    // that each stays well inside the verifier's budget.
    let _ = new_dir;
    let (_, old_mnt) = path_parts(old_dir);
    check_path(
        old_dentry,
        Some(old_mnt),
        old_dentry,
        Some((old_dentry, new_dentry)),
        hook::PATH_RENAME,
        event_op::RENAME,
    )
}

#[lsm(hook = "path_rename")]
pub fn pal_lsm_rename_to(ctx: LsmContext) -> i32 {
    let old_dentry: u64 = ctx.arg(1);
    let new_dir: u64 = ctx.arg(2);
    let new_dentry: u64 = ctx.arg(3);
    let previous: i32 = ctx.arg(5);
    if previous != 0 {
        return previous;
    }
    let (_, new_mnt) = path_parts(new_dir);
    check_path(
        new_dentry,
        Some(new_mnt),
        new_dentry,
        Some((old_dentry, new_dentry)),
        hook::PATH_RENAME,
        event_op::RENAME,
    )
}

#[lsm(hook = "path_link")]
pub fn pal_lsm_link(ctx: LsmContext) -> i32 {
    let old_dentry: u64 = ctx.arg(0);
    let new_dir: u64 = ctx.arg(1);
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // A new name for a file escapes the rules on its old one: linking is
    // judged as a write of the file linked to.
    let (_, mnt) = path_parts(new_dir);
    check_path(
        old_dentry,
        Some(mnt),
        old_dentry,
        None,
        hook::PATH_LINK,
        event_op::LINK,
    )
}

#[lsm(hook = "path_truncate")]
pub fn pal_lsm_trunc(ctx: LsmContext) -> i32 {
    on_path(&ctx, 1, hook::PATH_TRUNCATE, event_op::TRUNCATE)
}

/// A file's mode changed (chmod): a write of its metadata, which could
/// otherwise open a read-only file to writes by others.
#[lsm(hook = "path_chmod")]
pub fn pal_lsm_chmod(ctx: LsmContext) -> i32 {
    on_path(&ctx, 2, hook::PATH_CHMOD, event_op::CHMOD)
}

/// A file's owner or group changed (chown): a write of its metadata, and
/// of who an `ownerOnly` rule lets in.
#[lsm(hook = "path_chown")]
pub fn pal_lsm_chown(ctx: LsmContext) -> i32 {
    on_path(&ctx, 3, hook::PATH_CHOWN, event_op::CHOWN)
}

/// A new name made in a directory (a regular file created by `open` with
/// `O_CREAT` whatever its access mode, a FIFO, socket or device node):
/// a write of the new path. `open` asks before it knows whether a name
/// the dentry cache does not hold exists; refused, it drops `O_CREAT` and
/// opens an existing file all the same (judged by `file_open`), so such a
/// refusal is counted and reported as a create that did not happen.
#[lsm(hook = "path_mknod")]
pub fn pal_lsm_mknod(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 4, true, hook::PATH_MKNOD, event_op::CREATE)
}

/// A new directory (mkdir): a new name in its parent, as `path_mknod`'s.
#[lsm(hook = "path_mkdir")]
pub fn pal_lsm_mkdir(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 3, true, hook::PATH_MKDIR, event_op::CREATE)
}

/// A new symlink: a new name in its directory, whose target then answers
/// for it to every reader that follows it.
#[lsm(hook = "path_symlink")]
pub fn pal_lsm_symlink(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 3, true, hook::PATH_SYMLINK, event_op::CREATE)
}

/// A directory removed (rmdir): a name taken away, as unlink's.
#[lsm(hook = "path_rmdir")]
pub fn pal_lsm_rmdir(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 2, false, hook::PATH_RMDIR, event_op::UNLINK)
}

/// An inode hook given a dentry (argument 1) and no mount: an extended
/// attribute or ACL set or removed, the earlier LSMs' verdict at `ret`.
/// On a `user.` attribute, a capability, a label or an ACL alike: a
/// write of the file's metadata, judged as `chmod` is.
#[inline(always)]
fn on_dentry(ctx: &LsmContext, ret: usize, on: u8) -> i32 {
    let dentry: u64 = ctx.arg(1);
    let previous: i32 = ctx.arg(ret);
    if previous != 0 {
        return previous;
    }
    check_path(dentry, None, dentry, None, on, event_op::XATTR)
}

#[lsm(hook = "inode_setxattr")]
pub fn pal_lsm_setxattr(ctx: LsmContext) -> i32 {
    on_dentry(&ctx, 6, hook::INODE_SETXATTR)
}

#[lsm(hook = "inode_removexattr")]
pub fn pal_lsm_rmxattr(ctx: LsmContext) -> i32 {
    on_dentry(&ctx, 3, hook::INODE_REMOVEXATTR)
}

/// POSIX ACLs from Linux 6.2 on: they no longer pass `inode_setxattr`.
#[lsm(hook = "inode_set_acl")]
pub fn pal_lsm_set_acl(ctx: LsmContext) -> i32 {
    on_dentry(&ctx, 4, hook::INODE_SET_ACL)
}

#[lsm(hook = "inode_remove_acl")]
pub fn pal_lsm_rm_acl(ctx: LsmContext) -> i32 {
    on_dentry(&ctx, 3, hook::INODE_REMOVE_ACL)
}

#[lsm(hook = "bprm_check_security")]
pub fn pal_lsm_exec(ctx: LsmContext) -> i32 {
    let bprm: *const u8 = ctx.arg(0);
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    // Counted for the execs no process rule set judges: outside every pod
    // with rules, or in one whose rules are for files only.
    let Some((cgroup, sets)) = pod_sets().filter(|(_, sets)| sets.process != 0) else {
        count_atomic(&PAL_LSM_STATS, direction::LOCAL, reason::PASS_UNENFORCED, 0);
        return 0;
    };
    // SAFETY: `bprm` is the hook's `struct linux_binprm *`.
    let file: *const u8 = unsafe { field(bprm, offset(&PAL_OFF_BPRM_FILE)) };
    check(
        file,
        false,
        sets.process,
        op::READ,
        (hook::EXEC, event_op::EXEC),
        cgroup,
    )
}

#[lsm(hook = "file_open")]
pub fn pal_lsm_open(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some((cgroup, sets)) = pod_sets() else {
        return 0;
    };
    if sets.file == 0 {
        return 0;
    }
    // SAFETY: `file` is the hook's `struct file *`.
    let (mode, flags): (u32, u32) = unsafe {
        (
            field(file, offset(&PAL_OFF_FILE_F_MODE)),
            field(file, offset(&PAL_OFF_FILE_F_FLAGS)),
        )
    };
    if flags & fmode::EXEC_FLAG != 0 {
        // The open execve(2) makes of the program: for process rules.
        return 0;
    }
    if acting_for_another() && on_an_internal_mount(file) {
        // Overlayfs opening its layers' files (a copy-up, the real file
        // behind an overlay's) with borrowed credentials, after the
        // process's own open or write on the overlay's path was judged:
        // their paths are not the process's (nor any rule's), and an
        // allowlist would refuse them.
        return 0;
    }
    let (which, what) = if mode & fmode::WRITE != 0 {
        (op::WRITE, event_op::WRITE)
    } else {
        (op::READ, event_op::READ)
    };
    // SAFETY: as above; the offsets come from the kernel's BTF.
    let inode: u64 = unsafe { field(file, offset(&PAL_OFF_FILE_F_INODE)) };
    check(
        file,
        inode_is_dir(inode),
        sets.file,
        which,
        (hook::FILE_OPEN, what),
        cgroup,
    )
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
