//! The daemon's capabilities once it has started.
//!
//! Loading needs the most: `CAP_BPF` for maps, BTF and programs,
//! `CAP_PERFMON` for the LSM programs and the verifier's pointer rules,
//! `CAP_NET_ADMIN` for the network program types (and, run as plain root,
//! `CAP_SYS_ADMIN` to mount securityfs when the host has not). Once the
//! programs are loaded, the maps open and the endpoints bound, the rest of
//! the run only writes maps it holds open, opens pins, pins and updates
//! links, attaches programs it already loaded to new veths and uplinks,
//! reads ring buffers and serves HTTP. What of that still needs a
//! capability depends on the kernel ([`runtime_needs`]):
//!
//! - `CAP_BPF` before Linux 5.19: there, with
//!   `kernel.unprivileged_bpf_disabled` set, every `bpf(2)` command needs
//!   it. From 5.19 on only `BPF_MAP_CREATE` and `BPF_PROG_LOAD` do
//!   (kernel/bpf/syscall.c, `__sys_bpf`: "bpf: refine
//!   kernel.unprivileged_bpf_disabled behaviour"); the rest is governed by
//!   the file descriptors and the pins' file permissions, and the daemon
//!   creates and loads nothing after start.
//! - `CAP_NET_ADMIN` without TCX (before 6.6): TC programs go onto a new
//!   pod's veth as a clsact qdisc and a cls_bpf filter over rtnetlink (and
//!   filters off it), which refuses every request but a dump without it
//!   (net/core/rtnetlink.c, `rtnetlink_rcv_msg`). With TCX, TC and XDP
//!   attachments are bpf links: `link_create`, `tcx_link_attach` and
//!   `bpf_xdp_link_attach` check no capability (the program type's was
//!   checked at load). The filters a TCX kernel's daemon still adds and
//!   removes (new veths get them first: they attach at once) go through
//!   the filter helper, a child that keeps `CAP_NET_ADMIN` alone
//!   ([`drop_for_filter_helper`], `loader::filter_helper`); only where it
//!   could not start does the daemon keep the capability itself.
//!
//! [`drop_after_start`] keeps exactly those: it clears the ambient and
//! inheritable sets, lowers the permitted and effective sets, shrinks the
//! bounding set where it may (`CAP_SETPCAP`, which a container runtime does
//! not grant), sets no_new_privs, then reads every thread's sets back from
//! `/proc/self/task` and reports what is really there. Whatever it cannot
//! do it logs and reports, and the daemon goes on.

use std::{collections::BTreeMap, fs, io};

use aya::util::KernelVersion;
use serde::Serialize;

/// Capability numbers (include/uapi/linux/capability.h) by the names
/// Kubernetes uses (without `CAP_`), in number order.
pub const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

pub const CAP_SETPCAP: u32 = 8;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_BPF: u32 = 39;

/// The number of a capability named as Kubernetes names it (`NET_ADMIN`;
/// a `CAP_` prefix is accepted too), or `None` for a name Linux lacks.
pub fn number(name: &str) -> Option<u32> {
    let name = name.strip_prefix("CAP_").unwrap_or(name);
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// The name of capability `number` (`CAP_41` for one newer than [`NAMES`]).
pub fn name(number: u32) -> String {
    NAMES
        .get(number as usize)
        .map_or_else(|| format!("CAP_{number}"), |n| (*n).to_owned())
}

/// The names of the capabilities in `mask`, in number order.
pub fn names(mask: u64) -> Vec<String> {
    (0..64).filter(|c| mask & (1 << c) != 0).map(name).collect()
}

/// What the daemon needs after start on a kernel of `version` (`None`:
/// unknown, so the older kernel's needs) with or without TCX, each with
/// the reason.
pub fn runtime_needs(version: Option<KernelVersion>, links_only: bool) -> Vec<(u32, &'static str)> {
    let mut needs = Vec::new();
    if version.is_none_or(|v| v < KernelVersion::new(5, 19, 0)) {
        needs.push((
            CAP_BPF,
            "before Linux 5.19 every bpf(2) command needs it while kernel.unprivileged_bpf_disabled is set: writing the maps, opening pins, pinning links",
        ));
    }
    if !links_only {
        needs.push((
            CAP_NET_ADMIN,
            "clsact qdiscs and filters go onto new pods' veths, or off them, over rtnetlink (a kernel without TCX, or a TCX kernel's filters where the filter helper could not start)",
        ));
    }
    needs
}

/// What the daemon holds after [`drop_after_start`], as read back from
/// `/proc/self/task/*/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Held by some thread of the daemon (effective or permitted).
    pub kept: Vec<String>,
    /// Why each of `kept` is kept.
    pub why: BTreeMap<String, String>,
    /// Held at start, gone now.
    pub dropped_after_start: Vec<String>,
    /// The bounding set: what an exec could regain at most (with
    /// no_new_privs, nothing beyond `kept`).
    pub bounding: Vec<String>,
    /// Why the bounding set holds more than `kept`, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounding_kept: Option<String>,
    pub no_new_privs: bool,
    /// What went wrong: a step that failed, a thread that holds more, a
    /// capability needed but never held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One thread's sets, as `/proc/<pid>/task/<tid>/status` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCaps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl ProcCaps {
    /// What the thread holds: effective or permitted.
    pub fn held(&self) -> u64 {
        self.effective | self.permitted
    }
}

/// The capability fields of a `/proc/.../status` text.
pub fn parse_status(text: &str) -> Option<ProcCaps> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let hex = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
    Some(ProcCaps {
        inheritable: hex("CapInh")?,
        permitted: hex("CapPrm")?,
        effective: hex("CapEff")?,
        bounding: hex("CapBnd")?,
        ambient: hex("CapAmb")?,
        no_new_privs: field("NoNewPrivs") == Some("1"),
    })
}

/// Every thread of `process` (a pid, or `self`): its task directory and
/// name, and its sets.
pub fn threads(process: &str) -> io::Result<Vec<(String, ProcCaps)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{process}/task"))? {
        let dir = entry?.path();
        // A thread that ended since the listing is no longer there.
        let Ok(status) = fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let caps = parse_status(&status).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no capability sets in {}/status", dir.display()),
            )
        })?;
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        out.push((format!("{} ({})", dir.display(), comm.trim()), caps));
    }
    Ok(out)
}

/// The calling thread's sets, bounding set included.
fn this_thread() -> Option<ProcCaps> {
    parse_status(&fs::read_to_string("/proc/thread-self/status").ok()?)
}

/// The calling thread's sets, as capget(2) returns them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two, low word first.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

fn capget() -> io::Result<Sets> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version 3 header and the two data structures it asks for.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |f: fn(&Data) -> u32| u64::from(f(&data[0])) | u64::from(f(&data[1])) << 32;
    Ok(Sets {
        effective: join(|d| d.effective),
        permitted: join(|d| d.permitted),
        inheritable: join(|d| d.inheritable),
    })
}

fn capset(sets: Sets) -> io::Result<()> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let split = |m: u64| [m as u32, (m >> 32) as u32];
    let (e, p, i) = (
        split(sets.effective),
        split(sets.permitted),
        split(sets.inheritable),
    );
    let data = [0, 1].map(|w| Data {
        effective: e[w],
        permitted: p[w],
        inheritable: i[w],
    });
    // SAFETY: as in `capget`; the kernel only reads `data`.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(option, arg, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops what the rest of the run does not need on this kernel, and reports
/// what is left. `links_only`: every TC attachment this process makes
/// after start is a TCX link (TCX, and filters, if any, left to the filter
/// helper). Call it
/// once everything that needs more has run (the filter helper started),
/// from the thread that started
/// the daemon: capabilities belong to threads, and threads started later
/// inherit the reduced sets.
pub fn drop_after_start(links_only: bool) -> Capabilities {
    let version = KernelVersion::current().ok();
    let needs = runtime_needs(version, links_only);
    let report = drop_to(&needs);
    let shown = |list: &[String]| {
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };
    tracing::info!(
        "capabilities after start: kept {}; dropped {}; bounding set {}; no_new_privs {}",
        shown(&report.kept),
        shown(&report.dropped_after_start),
        shown(&report.bounding),
        report.no_new_privs
    );
    for (cap, why) in &report.why {
        tracing::info!("kept {cap}: {why}");
    }
    if let Some(why) = &report.bounding_kept {
        tracing::info!("bounding set: {why}");
    }
    for note in &report.notes {
        tracing::warn!("capabilities: {note}");
    }
    report
}

/// The TC filter helper's drop (`loader::filter_helper`): `CAP_NET_ADMIN`
/// alone, for clsact filters over rtnetlink. A single thread, so the
/// report covers the whole helper.
pub fn drop_for_filter_helper() -> Capabilities {
    drop_to(&[(
        CAP_NET_ADMIN,
        "clsact filters onto and off new veths for the daemon, which holds no capability",
    )])
}

/// What any thread of `process` (a pid, or `self`) holds, effective or
/// permitted.
pub fn held_by(process: &str) -> io::Result<u64> {
    Ok(threads(process)?.iter().fold(0, |m, (_, c)| m | c.held()))
}

/// Lowers the calling thread to `needs` (number, why) and reads back what
/// every thread holds.
fn drop_to(needs: &[(u32, &str)]) -> Capabilities {
    let keep = needs.iter().fold(0u64, |m, (c, _)| m | 1 << c);
    let mut notes = Vec::new();
    let before = match held_by("self") {
        Ok(held) => held,
        Err(e) => {
            notes.push(format!("reading /proc/self/task before the drop: {e}"));
            capget().map_or(0, |s| s.effective | s.permitted)
        }
    };
    let mut report = Capabilities::default();
    match capget() {
        Ok(sets) => report.bounding_kept = lower(sets, keep, &mut notes),
        Err(e) => notes.push(format!("capget: {e}: nothing dropped")),
    }
    match threads("self") {
        Ok(threads) => {
            let held = threads.iter().fold(0, |m, (_, c)| m | c.held());
            for (thread, caps) in &threads {
                let extra = caps.held() & !keep;
                if extra != 0 {
                    notes.push(format!(
                        "thread {thread} still holds {}: it started before the drop",
                        names(extra).join(", ")
                    ));
                }
            }
            report.no_new_privs = threads.iter().all(|(_, c)| c.no_new_privs);
            // The bounding set of the thread that dropped: the one others
            // started later inherit.
            report.bounding = names(this_thread().map_or(0, |c| c.bounding));
            report.kept = names(held);
            report.dropped_after_start = names(before & !held);
            for (cap, why) in needs {
                if held & 1 << cap != 0 {
                    report.why.insert(name(*cap), (*why).to_owned());
                } else {
                    notes.push(format!(
                        "{} is needed but was never held: {why}",
                        name(*cap)
                    ));
                }
            }
        }
        Err(e) => notes.push(format!("reading /proc/self/task after the drop: {e}")),
    }
    report.notes = notes;
    report
}

/// The drop itself, in the order the kernel allows it: the bounding set
/// while `CAP_SETPCAP` is still effective, then the ambient set,
/// no_new_privs, and last the permitted, effective and inheritable sets.
/// Returns why the bounding set was left as it was, if it was.
fn lower(sets: Sets, keep: u64, notes: &mut Vec<String>) -> Option<String> {
    let mut bounding_kept = None;
    let bounding = this_thread().map_or(0, |c| c.bounding);
    let extra = bounding & !keep;
    if extra != 0 {
        if sets.effective & 1 << CAP_SETPCAP != 0 {
            for cap in (0..64).filter(|c| extra & (1 << c) != 0) {
                if let Err(e) = prctl(libc::PR_CAPBSET_DROP, cap) {
                    notes.push(format!(
                        "dropping {} from the bounding set: {e}",
                        name(cap as u32)
                    ));
                }
            }
        } else {
            bounding_kept = Some(format!(
                "it keeps {}: only CAP_SETPCAP may shrink it, and with no_new_privs no exec regains them",
                names(extra).join(", ")
            ));
        }
    }
    if let Err(e) = prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    ) {
        notes.push(format!("clearing the ambient set: {e}"));
    }
    if let Err(e) = prctl(libc::PR_SET_NO_NEW_PRIVS, 1) {
        notes.push(format!("setting no_new_privs: {e}"));
    }
    let kept = sets.permitted & keep;
    if let Err(e) = capset(Sets {
        effective: kept,
        permitted: kept,
        inheritable: 0,
    }) {
        notes.push(format!("capset: {e}"));
    }
    bounding_kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_follow_the_kernel() {
        assert_eq!(number("NET_ADMIN"), Some(CAP_NET_ADMIN));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("PERFMON"), Some(38));
        assert_eq!(number("BPF"), Some(CAP_BPF));
        assert_eq!(number("SETPCAP"), Some(CAP_SETPCAP));
        assert_eq!(number("bpf"), None);
        assert_eq!(name(40), "CHECKPOINT_RESTORE");
        assert_eq!(name(41), "CAP_41");
        assert_eq!(names(0xc0_0000_1000), ["NET_ADMIN", "PERFMON", "BPF"]);
        assert!(names(0).is_empty());
    }

    #[test]
    fn what_is_kept_depends_on_the_kernel() {
        let kept = |v: Option<KernelVersion>, links_only| {
            runtime_needs(v, links_only)
                .into_iter()
                .map(|(c, _)| name(c))
                .collect::<Vec<_>>()
        };
        let v = |a, b| Some(KernelVersion::new(a, b, 0));
        assert_eq!(kept(v(5, 15), false), ["BPF", "NET_ADMIN"]);
        assert_eq!(kept(v(5, 18), false), ["BPF", "NET_ADMIN"]);
        assert_eq!(kept(v(5, 19), false), ["NET_ADMIN"]);
        assert_eq!(kept(v(6, 1), false), ["NET_ADMIN"]);
        assert!(kept(v(6, 6), true).is_empty());
        assert_eq!(
            kept(v(6, 6), false),
            ["NET_ADMIN"],
            "filters on a TCX kernel"
        );
        assert_eq!(kept(None, false), ["BPF", "NET_ADMIN"]);
    }

    #[test]
    fn the_sets_are_read_from_proc_status() {
        let text = "Name:\tpalisade\nCapInh:\t0000000000000000\nCapPrm:\t0000000000001000\n\
CapEff:\t0000000000001000\nCapBnd:\t000000c000001000\nCapAmb:\t0000000000000000\n\
NoNewPrivs:\t1\nSeccomp:\t2\n";
        let caps = parse_status(text);
        assert_eq!(
            caps,
            Some(ProcCaps {
                inheritable: 0,
                permitted: 0x1000,
                effective: 0x1000,
                bounding: 0xc0_0000_1000,
                ambient: 0,
                no_new_privs: true,
            })
        );
        assert_eq!(caps.map(|c| c.held()), Some(0x1000));
        assert_eq!(parse_status("Name:\tx\nCapInh:\tzz\n"), None);
    }
}
