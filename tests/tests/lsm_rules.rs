//! Process and file rules enforced by the BPF-LSM programs, end to end:
//! policies compiled, rule sets written by the syncer's LSM share, and the
//! system calls of a process in the selected pod's cgroup judged by their
//! own errno. Runs in the QEMU guest (BPF LSM active); natively the tests
//! are reported as ignored with the reason.
//!
//! The test process itself joins the pod's cgroup for each operation and
//! leaves it at once, so that the operation under test is the only one the
//! rules see, and its errno is read directly.

use std::{
    fs,
    io::ErrorKind,
    os::unix::{
        fs::{OpenOptionsExt as _, PermissionsExt as _, symlink},
        process::CommandExt as _,
    },
    path::Path,
    process::Command,
    sync::{Mutex, MutexGuard, OnceLock, PoisonError},
};

use anyhow::{Context as _, bail, ensure};
use ebpf_common::{lsm::hook, maps, reason};
use palisade::{
    compile::lsm::compile_lsm,
    datapath::lsm::LsmMaps,
    loader::{self, attach, features::Features},
    model::{Snapshot, parse::parse_documents, standard},
    observe::{
        programs::{self, LsmPrograms},
        stats::read_pinned,
    },
    sync::lsm::LsmState,
};
use palisade_tests::{
    TempPins,
    harness::{self, Debugfs, Needs},
    unique,
};

fn main() {
    harness::main_then(
        &[
            (
                "file_rules_block_reads_and_writes_in_the_pod_only",
                Needs::BpfLsm,
                file_rules_block_reads_and_writes_in_the_pod_only,
            ),
            (
                "directories_holding_protected_paths_cannot_be_moved_or_changed",
                Needs::BpfLsm,
                directories_holding_protected_paths_cannot_be_moved_or_changed,
            ),
            (
                "exec_rules_and_allowlists_block_what_they_do_not_list",
                Needs::BpfLsm,
                exec_rules_and_allowlists_block_what_they_do_not_list,
            ),
            (
                "extended_attributes_and_acls_of_protected_files_are_writes",
                Needs::BpfLsm,
                extended_attributes_and_acls_of_protected_files_are_writes,
            ),
            (
                "an_xattr_change_finds_its_mount_past_mounts_of_single_files",
                Needs::BpfLsm,
                an_xattr_change_finds_its_mount_past_mounts_of_single_files,
            ),
            (
                "overlayfs_copy_up_under_a_file_allowlist_is_not_the_processs_own",
                Needs::BpfLsm,
                overlayfs_copy_up_under_a_file_allowlist_is_not_the_processs_own,
            ),
            (
                "from_source_rules_hold_on_the_path_hooks_too",
                Needs::BpfLsm,
                from_source_rules_hold_on_the_path_hooks_too,
            ),
            (
                "kubearmor_policies_and_rule_updates_take_effect_without_restarts",
                Needs::BpfLsm,
                kubearmor_policies_and_rule_updates_take_effect_without_restarts,
            ),
            (
                "a_preempted_run_never_decides_by_another_tasks_path",
                Needs::BpfLsmAndPreemptSwitch,
                a_preempted_run_never_decides_by_another_tasks_path,
            ),
            (
                "pods_at_more_cgroup_levels_than_looked_up_are_reported_not_enforced",
                Needs::BpfLsm,
                pods_at_more_cgroup_levels_than_looked_up_are_reported_not_enforced,
            ),
        ],
        unload,
    )
}

/// The programs, their maps and the syncer's LSM share, loaded once for
/// every test of this binary: in the guest (TCG) the verifier takes about
/// 10 s over the objects each time they load, and every test would pay
/// it. Each test writes its own rule sets for its own cgroup, which
/// replace the previous test's, as a daemon's next pass would.
struct Loaded {
    state: LsmState,
    pins: TempPins,
    programs: LsmPrograms,
    _loaded: loader::Loaded,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);
static LOAD_FAILED: OnceLock<String> = OnceLock::new();

/// Detaches the programs (their links are pinned) and removes the pins,
/// once every test is done.
fn unload() {
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(l) = loaded.take() {
        let _ = attach::unpin_links(&l.pins.pins);
    }
}

/// A pod cgroup and a fixture directory of one test's own, and the
/// programs with their maps (shared: [`Loaded`]).
struct Lab {
    cgroup: String,
    dir: String,
    loaded: MutexGuard<'static, Option<Loaded>>,
}

impl Lab {
    fn new() -> anyhow::Result<Self> {
        // A test that failed while holding the lock leaves the programs
        // as usable as before.
        let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = LOAD_FAILED.get() {
            bail!("the first test's load failed: {why}");
        }
        if loaded.is_none() {
            let features = Features::probe();
            let load = || -> anyhow::Result<Loaded> {
                let pins = TempPins::new()?;
                let mut objects = palisade_tests::lsm_only(&pins.pins, &features)?;
                let lsm = palisade_tests::lsm_object(&mut objects)?;
                attach::attach_lsm(lsm, &pins.pins)?;
                let programs = LsmPrograms::of(lsm)?;
                let state = LsmState::new(LsmMaps::open(&pins.pins)?)?;
                Ok(Loaded {
                    state,
                    pins,
                    programs,
                    _loaded: objects,
                })
            };
            // Once: every later test would wait for the verifier again.
            match load() {
                Ok(l) => *loaded = Some(l),
                Err(e) => {
                    let _ = LOAD_FAILED.set(format!("{e:?}"));
                    return Err(e);
                }
            }
        }
        let name = unique("pal-lsm");
        let cgroup = format!("/sys/fs/cgroup/{name}");
        fs::create_dir(&cgroup).with_context(|| format!("creating {cgroup}"))?;
        let dir = format!("/tmp/{name}");
        fs::create_dir_all(&dir)?;
        Ok(Self {
            cgroup,
            dir,
            loaded,
        })
    }

    fn state(&mut self) -> anyhow::Result<&mut LsmState> {
        Ok(&mut self.loaded.as_mut().context("not loaded")?.state)
    }

    fn pins(&self) -> anyhow::Result<&palisade::paths::PinDir> {
        Ok(&self.loaded.as_ref().context("not loaded")?.pins.pins)
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.dir)
    }

    fn file(&self, rel: &str) -> anyhow::Result<String> {
        let path = self.path(rel);
        if let Some(parent) = Path::new(&path).parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, "x\n")?;
        Ok(path)
    }

    /// Applies `policies` (YAML, `{dir}` replaced) with pod x/a in the
    /// cgroup.
    fn apply(&mut self, policies: &str) -> anyhow::Result<()> {
        let mut s: Snapshot = standard::snapshot();
        for p in &mut s.pods {
            if p.key() == "x/a" {
                std::sync::Arc::make_mut(p).cgroup = Some(self.cgroup.clone());
            }
        }
        for d in parse_documents(&policies.replace("{dir}", &self.dir), "test.yaml", "x") {
            s.policies
                .push(d.map_err(|e| anyhow::anyhow!("{e}"))?.policy().into());
        }
        let desired = compile_lsm(&s);
        let report = self.state()?.apply(&desired)?;
        ensure!(report.errors.is_empty(), "{:?}", report.errors);
        ensure!(report.not_enforced.is_empty(), "{:?}", report.not_enforced);
        Ok(())
    }

    /// Runs `f` with this process in the pod's cgroup, then moves it back.
    fn in_pod<T>(&self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        let me = std::process::id().to_string();
        let home = fs::read_to_string("/proc/self/cgroup")?;
        let home = home
            .trim()
            .rsplit_once("::")
            .map(|(_, p)| format!("/sys/fs/cgroup{p}"))
            .context("cgroup v2 membership")?;
        fs::write(format!("{}/cgroup.procs", self.cgroup), &me)?;
        // Back home even if `f` panics: the next test must not start in
        // this pod, under this test's rules.
        struct Home(String, String);
        impl Drop for Home {
            fn drop(&mut self) {
                let _ = fs::write(&self.0, &self.1);
            }
        }
        let home = Home(format!("{home}/cgroup.procs"), me);
        let out = f();
        fs::write(&home.0, &home.1)?;
        Ok(out)
    }

    /// Blocks given unjudged (the run lost its working memory on every
    /// try) on `hook` since the programs loaded.
    fn unjudged_blocks(&self, hook: u8) -> anyhow::Result<u64> {
        let map: aya::maps::PerCpuHashMap<aya::maps::MapData, ebpf_common::lsm::DecisionKey, u64> =
            palisade_tests::pinned(self.pins()?, maps::LSM_DECIDE)?;
        Ok(map
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| {
                k.policy == ebpf_common::lsm::UNJUDGED_POLICY
                    && k.hook == hook
                    && k.action == ebpf_common::lsm::action::BLOCK
            })
            .map(|(_, per_cpu)| per_cpu.iter().sum::<u64>())
            .sum())
    }

    /// Runs of `program` the kernel skipped since it loaded, read through
    /// the loader's descriptor (the daemon's way) and then through the
    /// pinned link (`palisade status`'s), which must not have counted less
    /// (each read checks the program's type, and the link's its id).
    fn runs_skipped(&self, program: &str) -> anyhow::Result<u64> {
        let loaded = self.loaded.as_ref().context("not loaded")?;
        let find = |counts: Vec<(&'static str, std::io::Result<u64>)>| {
            counts
                .into_iter()
                .find(|(p, _)| *p == program)
                .with_context(|| format!("{program} is not loaded"))?
                .1
                .with_context(|| format!("the skipped runs of {program}"))
        };
        let held = find(loaded.programs.runs_skipped())?;
        let pinned = find(programs::pinned_runs_skipped(&loaded.pins.pins))?;
        ensure!(
            pinned >= held,
            "{program}: {held} runs skipped through its descriptor, {pinned} through its link"
        );
        Ok(pinned)
    }

    /// The LSM programs' counter of `code` since they loaded.
    fn counted(&self, code: u32) -> anyhow::Result<u64> {
        let name = reason::name(code);
        Ok(read_pinned(&self.pins()?.map(maps::LSM_STATS))?
            .iter()
            .filter(|r| r.reason == name)
            .map(|r| r.events)
            .sum())
    }

    fn decisions(&self) -> anyhow::Result<u64> {
        let map: aya::maps::PerCpuHashMap<aya::maps::MapData, ebpf_common::lsm::DecisionKey, u64> =
            palisade_tests::pinned(self.pins()?, maps::LSM_DECIDE)?;
        Ok(map
            .iter()
            .filter_map(Result::ok)
            .map(|(_, per_cpu)| per_cpu.iter().sum::<u64>())
            .sum())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(&self.cgroup);
    }
}

/// The errno of opening `path` for reading (`write`: for appending), or 0.
fn open_errno(path: &str, write: bool) -> i32 {
    let r = fs::OpenOptions::new().read(!write).append(write).open(path);
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// The errno of setting `path`'s mode to 0644, or 0.
fn chmod_errno(path: &str) -> i32 {
    errno_of(fs::set_permissions(path, fs::Permissions::from_mode(0o644)))
}

/// The errno of swapping `a` and `b` (renameat2 with RENAME_EXCHANGE),
/// or 0.
fn exchange_errno(a: &str, b: &str) -> i32 {
    let (Ok(a), Ok(b)) = (std::ffi::CString::new(a), std::ffi::CString::new(b)) else {
        return -1;
    };
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// The errno of giving `path` to root (its owner already), or 0.
fn chown_errno(path: &str) -> i32 {
    errno_of(std::os::unix::fs::chown(path, Some(0), Some(0)))
}

/// The errno of creating `path` opened for reading only, or 0.
fn create_errno(path: &str) -> i32 {
    errno_of(
        fs::OpenOptions::new()
            .read(true)
            .write(false)
            .create(false)
            .custom_flags(libc::O_CREAT)
            .open(path),
    )
}

/// The errno of making a FIFO at `path`, or 0.
fn mkfifo_errno(path: &str) -> i32 {
    let Ok(c) = std::ffi::CString::new(path) else {
        return -1;
    };
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn exec_errno(path: &str) -> i32 {
    match Command::new(path).status() {
        Ok(_) => 0,
        Err(e) if e.kind() == ErrorKind::NotFound => libc::ENOENT,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

const EPERM: i32 = libc::EPERM;

const POLICY: &str = "apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: files, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
";

fn file_rules_block_reads_and_writes_in_the_pod_only() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    let secret = lab.file("secret")?;
    let ok = lab.file("ok")?;
    let log = lab.file("logs/app.log")?;
    let ssl = lab.file("ssl/key")?;
    let sslx = lab.file("sslx")?;
    // 40 levels below the blocked directory, and a path longer than the
    // kernel's 252-byte key.
    let deep_rel = format!("ssl/{}f", "d123456/".repeat(40));
    let deep = lab.file(&deep_rel)?;
    let link = lab.path("link-to-secret");
    symlink(&secret, &link)?;
    lab.apply(&format!(
        "{POLICY}  file:
    rules:
    - {{action: Block, paths: [{{dir}}/secret]}}
    - {{action: Block, readOnly: true, dirs: [{{path: {{dir}}/logs/}}]}}
    - {{action: Block, dirs: [{{path: {{dir}}/ssl/, recursive: true}}]}}
"
    ))?;
    let before = lab.decisions()?;
    let got = lab.in_pod(|| {
        [
            ("read secret", open_errno(&secret, false)),
            ("read ok", open_errno(&ok, false)),
            ("symlink to secret", open_errno(&link, false)),
            ("write log", open_errno(&log, true)),
            ("read log", open_errno(&log, false)),
            ("read ssl/key", open_errno(&ssl, false)),
            ("read sslx", open_errno(&sslx, false)),
            ("read deep", open_errno(&deep, false)),
        ]
    })?;
    let want = [
        ("read secret", EPERM),
        ("read ok", 0),
        ("symlink to secret", EPERM),
        ("write log", EPERM),
        ("read log", 0),
        ("read ssl/key", EPERM),
        ("read sslx", 0),
        ("read deep", EPERM),
    ];
    ensure!(got == want, "in the pod: got {got:?}, want {want:?}");
    // Writes of a file's metadata, and new names, are writes too.
    let new_in_logs = lab.path("logs/new");
    let fifo_in_logs = lab.path("logs/fifo");
    let new_beside = lab.path("new");
    let dir_in_logs = lab.path("logs/dir");
    let link_in_logs = lab.path("logs/link");
    let old_dir_in_logs = lab.path("logs/old");
    fs::create_dir(&old_dir_in_logs)?;
    let dir_beside = lab.path("dir");
    let got = lab.in_pod(|| {
        [
            ("chmod secret", chmod_errno(&secret)),
            ("chmod ok", chmod_errno(&ok)),
            ("chown log", chown_errno(&log)),
            ("chown ok", chown_errno(&ok)),
            ("create in logs, read-only", create_errno(&new_in_logs)),
            ("mkfifo in logs", mkfifo_errno(&fifo_in_logs)),
            ("create beside", create_errno(&new_beside)),
            ("O_CREAT open of the log", create_errno(&log)),
            ("mkdir in logs", errno_of(fs::create_dir(&dir_in_logs))),
            ("symlink in logs", errno_of(symlink(&ok, &link_in_logs))),
            ("rmdir in logs", errno_of(fs::remove_dir(&old_dir_in_logs))),
            ("mkdir beside", errno_of(fs::create_dir(&dir_beside))),
        ]
    })?;
    let want = [
        ("chmod secret", EPERM),
        ("chmod ok", 0),
        ("chown log", EPERM),
        ("chown ok", 0),
        ("create in logs, read-only", EPERM),
        ("mkfifo in logs", EPERM),
        ("create beside", 0),
        ("O_CREAT open of the log", 0),
        ("mkdir in logs", EPERM),
        ("symlink in logs", EPERM),
        ("rmdir in logs", EPERM),
        ("mkdir beside", 0),
    ];
    ensure!(got == want, "in the pod: got {got:?}, want {want:?}");
    ensure!(
        [&new_in_logs, &fifo_in_logs, &dir_in_logs, &link_in_logs]
            .iter()
            .all(|p| fs::symlink_metadata(p).is_err())
            && Path::new(&old_dir_in_logs).is_dir(),
        "a blocked creation or removal took effect"
    );
    // Outside the pod nothing is judged.
    ensure!(
        open_errno(&secret, false) == 0 && chmod_errno(&secret) == 0,
        "a process outside the pod was blocked"
    );
    ensure!(
        create_errno(&new_in_logs) == 0,
        "a process outside the pod was blocked"
    );
    ensure!(
        open_errno(&log, true) == 0,
        "a process outside the pod was blocked"
    );
    let after = lab.decisions()?;
    // Twelve blocked: five opens, then chmod, chown, create, mkfifo,
    // mkdir, symlink and rmdir.
    ensure!(
        after >= before + 12,
        "decisions counted: {before} -> {after}"
    );
    Ok(())
}

fn directories_holding_protected_paths_cannot_be_moved_or_changed() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    // None of these directories' names lies under a rule: only the rules
    // on what they hold protect them.
    lab.file("conf/a")?;
    lab.file("secret/k")?;
    lab.file("free/f")?;
    lab.file("vault/key")?;
    // What patterns reach through their wildcards.
    lab.file("home/alice/.ssh/id_rsa")?;
    lab.file("home/notes")?;
    // An Audit rule gives /home/alice a name guard of its own, looser than
    // the pattern's guard, which must still hold there.
    lab.file("home/alice/notes")?;
    lab.file("home/swap")?;
    lab.file("logs/keep/today/a.log")?;
    lab.file("logs/open/today/a.log")?;
    for dir in ["empty", "moved", "home/bob", "incoming"] {
        fs::create_dir_all(lab.path(dir))?;
    }
    lab.apply(&format!(
        "{POLICY}  file:
    rules:
    - {{action: Block, readOnly: true, dirs: [{{path: {{dir}}/conf/, recursive: true}}]}}
    - {{action: Block, readOnly: true, dirs: [{{path: {{dir}}/empty/}}]}}
    - {{action: Block, readOnly: true, dirs: [{{path: {{dir}}/fresh/}}]}}
    - {{action: Block, dirs: [{{path: {{dir}}/secret/}}]}}
    - {{action: Block, paths: [{{dir}}/vault/key]}}
    - {{action: Block, patterns: [{{dir}}/home/*/.ssh/id_rsa]}}
    - {{action: Audit, paths: [{{dir}}/home/alice/notes]}}
    - {{action: Audit, patterns: [{{dir}}/logs/*/today/*.log]}}
    - {{action: Block, readOnly: true, dirs: [{{path: {{dir}}/logs/keep/, recursive: true}}]}}
"
    ))?;
    let (conf, free, empty, fresh) = (
        lab.path("conf"),
        lab.path("free"),
        lab.path("empty"),
        lab.path("fresh"),
    );
    let before = lab.decisions()?;
    let got = lab.in_pod(|| {
        [
            (
                "rename conf",
                errno_of(fs::rename(&conf, lab.path("conf.old"))),
            ),
            ("chmod conf", chmod_errno(&conf)),
            ("chown conf", chown_errno(&conf)),
            ("rmdir empty", errno_of(fs::remove_dir(&empty))),
            ("mkdir fresh", errno_of(fs::create_dir(&fresh))),
            ("rename moved to fresh", {
                errno_of(fs::rename(lab.path("moved"), &fresh))
            }),
            ("list secret", errno_of(fs::read_dir(lab.path("secret")))),
            (
                "rename vault",
                errno_of(fs::rename(lab.path("vault"), lab.path("open"))),
            ),
            (
                "rename the directory holding them",
                errno_of(fs::rename(&lab.dir, format!("{}.x", lab.dir))),
            ),
            ("list conf", errno_of(fs::read_dir(&conf))),
            ("chmod free", chmod_errno(&free)),
            (
                "rename free",
                errno_of(fs::rename(&free, lab.path("free2"))),
            ),
            ("mkdir other", errno_of(fs::create_dir(lab.path("other")))),
            // The directories a pattern reaches: renamed, they would carry
            // what it protects out of its reach, or something into it.
            (
                "rename alice's .ssh",
                errno_of(fs::rename(
                    lab.path("home/alice/.ssh"),
                    lab.path("home/alice/ssh"),
                )),
            ),
            (
                "rename alice",
                errno_of(fs::rename(lab.path("home/alice"), lab.path("alice"))),
            ),
            (
                "rename a directory into reach",
                errno_of(fs::rename(lab.path("incoming"), lab.path("home/dave"))),
            ),
            // Swapped with a file, the directory leaves all the same.
            (
                "exchange alice's .ssh with a file",
                exchange_errno(&lab.path("home/swap"), &lab.path("home/alice/.ssh")),
            ),
            // A guard pattern judges directories renamed, nothing else.
            (
                "rename a file matching the guard",
                errno_of(fs::rename(lab.path("home/notes"), lab.path("home/notes2"))),
            ),
            (
                "mkdir carol",
                errno_of(fs::create_dir(lab.path("home/carol"))),
            ),
            ("rmdir bob", errno_of(fs::remove_dir(lab.path("home/bob")))),
            // An Audit pattern's guard audits; it never loosens the Block
            // of the directory rule the renamed directory lies under.
            (
                "rename open/today",
                errno_of(fs::rename(
                    lab.path("logs/open/today"),
                    lab.path("logs/open/old"),
                )),
            ),
            // (Out of the blocked directory: its new name is free.)
            (
                "rename keep/today",
                errno_of(fs::rename(lab.path("logs/keep/today"), lab.path("kept"))),
            ),
        ]
    })?;
    let want = [
        ("rename conf", EPERM),
        ("chmod conf", EPERM),
        ("chown conf", EPERM),
        ("rmdir empty", EPERM),
        ("mkdir fresh", EPERM),
        ("rename moved to fresh", EPERM),
        ("list secret", EPERM),
        ("rename vault", EPERM),
        ("rename the directory holding them", EPERM),
        ("list conf", 0),
        ("chmod free", 0),
        ("rename free", 0),
        ("mkdir other", 0),
        ("rename alice's .ssh", EPERM),
        ("rename alice", EPERM),
        ("rename a directory into reach", EPERM),
        ("exchange alice's .ssh with a file", EPERM),
        ("rename a file matching the guard", 0),
        ("mkdir carol", 0),
        ("rmdir bob", 0),
        ("rename open/today", 0),
        ("rename keep/today", EPERM),
    ];
    ensure!(got == want, "in the pod: got {got:?}, want {want:?}");
    ensure!(
        Path::new(&conf).is_dir()
            && Path::new(&empty).is_dir()
            && !Path::new(&fresh).exists()
            && Path::new(&lab.path("moved")).is_dir()
            && Path::new(&lab.path("free2")).is_dir()
            && Path::new(&lab.path("home/alice/.ssh/id_rsa")).is_file()
            && Path::new(&lab.path("incoming")).is_dir()
            && Path::new(&lab.path("home/notes2")).is_file()
            && Path::new(&lab.path("home/carol")).is_dir()
            && !Path::new(&lab.path("home/bob")).exists()
            && Path::new(&lab.path("logs/open/old")).is_dir()
            && Path::new(&lab.path("logs/keep/today")).is_dir(),
        "a blocked change of a directory took effect, or an allowed one did not"
    );
    // Outside the pod the same calls go through.
    ensure!(
        errno_of(fs::read_dir(lab.path("secret"))) == 0 && errno_of(fs::create_dir(&fresh)) == 0,
        "a process outside the pod was blocked"
    );
    let after = lab.decisions()?;
    ensure!(
        after >= before + 9,
        "decisions counted: {before} -> {after}"
    );
    Ok(())
}

fn exec_rules_and_allowlists_block_what_they_do_not_list() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    let busybox = fs::read("/bin/busybox").context("the guest's busybox")?;
    let bin = |lab: &Lab, name: &str| -> anyhow::Result<String> {
        let path = lab.path(&format!("bin/{name}"));
        fs::create_dir_all(lab.path("bin"))?;
        fs::write(&path, &busybox)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(path)
    };
    // busybox runs the applet its name says.
    let yes = bin(&lab, "true")?;
    let no = bin(&lab, "false")?;
    lab.apply(&format!(
        "{POLICY}  process:
    rules:
    - {{action: Block, paths: [{{dir}}/bin/false]}}
"
    ))?;
    let got = lab.in_pod(|| (exec_errno(&yes), exec_errno(&no)))?;
    ensure!(got == (0, EPERM), "block list: got {got:?}");
    ensure!(exec_errno(&no) == 0, "outside the pod an exec was blocked");

    lab.apply(&format!(
        "{POLICY}  process:
    posture: Allowlist
    rules:
    - {{action: Allow, paths: [{{dir}}/bin/true]}}
"
    ))?;
    let got = lab.in_pod(|| (exec_errno(&yes), exec_errno(&no)))?;
    ensure!(got == (0, EPERM), "allowlist: got {got:?}");
    Ok(())
}

/// The errno of setting the extended attribute `name` of `path` to
/// `value` (through an open read-only descriptor: `fd`), or 0.
fn setxattr_errno(path: &str, name: &str, value: &[u8], fd: bool) -> i32 {
    let (Ok(p), Ok(n)) = (std::ffi::CString::new(path), std::ffi::CString::new(name)) else {
        return -1;
    };
    // SAFETY: NUL-terminated strings and a buffer that outlive the calls.
    let r = unsafe {
        if fd {
            let f = libc::open(p.as_ptr(), libc::O_RDONLY);
            if f < 0 {
                return std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
            }
            let r = libc::fsetxattr(f, n.as_ptr(), value.as_ptr().cast(), value.len(), 0);
            let e = std::io::Error::last_os_error();
            libc::close(f);
            if r != 0 {
                return e.raw_os_error().unwrap_or(-1);
            }
            r
        } else {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        }
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// The errno of removing the extended attribute `name` of `path`, or 0.
fn removexattr_errno(path: &str, name: &str) -> i32 {
    let (Ok(p), Ok(n)) = (std::ffi::CString::new(path), std::ffi::CString::new(name)) else {
        return -1;
    };
    // SAFETY: NUL-terminated strings that outlive the call.
    if unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// A POSIX access ACL as `system.posix_acl_access` holds it (version 2;
/// owner rw, group r, other r: what mode 0644 says, so valid anywhere).
const ACL_0644: [u8; 28] = [
    2, 0, 0, 0, // version
    1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, // ACL_USER_OBJ rw-
    4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, // ACL_GROUP_OBJ r--
    0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, // ACL_OTHER r--
];

/// File capabilities as `security.capability` holds them (revision 2,
/// none permitted or inherited): checked by the kernel before the hook.
const CAPS_NONE: [u8; 20] = [0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn extended_attributes_and_acls_of_protected_files_are_writes() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    let secret = lab.file("secret")?;
    let ok = lab.file("ok")?;
    let log = lab.file("logs/app.log")?;
    // /tmp is a tmpfs in the guest: trusted.* attributes (root's) and
    // ACLs both work there, so an allowed change returns 0.
    ensure!(
        setxattr_errno(&secret, "trusted.pal-old", b"1", false) == 0,
        "setting an attribute to remove later, outside the pod"
    );
    lab.apply(&format!(
        "{POLICY}  file:
    rules:
    - {{action: Block, paths: [{{dir}}/secret]}}
    - {{action: Block, readOnly: true, dirs: [{{path: {{dir}}/logs/}}]}}
"
    ))?;
    let before = lab.decisions()?;
    let got = lab.in_pod(|| {
        [
            (
                "set an attribute of secret",
                setxattr_errno(&secret, "trusted.pal", b"1", false),
            ),
            (
                "set an attribute of ok",
                setxattr_errno(&ok, "trusted.pal", b"1", false),
            ),
            (
                "remove an attribute of secret",
                removexattr_errno(&secret, "trusted.pal-old"),
            ),
            (
                "set an ACL on secret",
                setxattr_errno(&secret, "system.posix_acl_access", &ACL_0644, false),
            ),
            (
                "set an ACL on ok",
                setxattr_errno(&ok, "system.posix_acl_access", &ACL_0644, false),
            ),
            (
                "fsetxattr on the read-only log",
                setxattr_errno(&log, "trusted.pal", b"1", true),
            ),
            (
                "set a capability on secret",
                setxattr_errno(&secret, "security.capability", &CAPS_NONE, false),
            ),
        ]
    })?;
    let want = [
        ("set an attribute of secret", EPERM),
        ("set an attribute of ok", 0),
        ("remove an attribute of secret", EPERM),
        ("set an ACL on secret", EPERM),
        ("set an ACL on ok", 0),
        ("fsetxattr on the read-only log", EPERM),
        ("set a capability on secret", EPERM),
    ];
    ensure!(got == want, "in the pod: got {got:?}, want {want:?}");
    let after = lab.decisions()?;
    ensure!(
        after >= before + 5,
        "decisions counted: {before} -> {after}"
    );
    ensure!(
        setxattr_errno(&secret, "trusted.pal", b"1", false) == 0
            && removexattr_errno(&secret, "trusted.pal-old") == 0,
        "a process outside the pod was blocked"
    );
    Ok(())
}

/// The xattr hooks name no mount: the programs look for one, among at
/// most eight of the namespace's mounts of the file system, and a mount
/// of a single file (a pod's /etc/hosts, a ConfigMap key) cannot hold
/// any other file. Here nine such mounts come before the one that holds
/// the file in the kernel's list (kept in mount order up to Linux 6.15):
/// taken for candidates, they would leave the file unresolved, audited
/// and let through.
fn an_xattr_change_finds_its_mount_past_mounts_of_single_files() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    let (t, binds, dd) = (lab.path("t"), lab.path("binds"), lab.path("dd"));
    for d in [&t, &binds, &dd] {
        fs::create_dir_all(d)?;
    }
    lab.apply(&format!(
        "{POLICY}  file:
    rules:
    - {{action: Block, paths: [{{dir}}/dd/f]}}
"
    ))?;
    let c = |p: String| std::ffi::CString::new(p).context("a path with a NUL");
    let (tc, td, tf) = (c(t.clone())?, c(format!("{t}/d"))?, c(format!("{t}/d/f"))?);
    let ddc = c(dd.clone())?;
    let ddf = c(format!("{dd}/f"))?;
    let mut singles = Vec::new();
    for i in 1..=9 {
        singles.push((c(format!("{t}/f{i}"))?, c(format!("{binds}/f{i}"))?));
    }
    let got = lab.in_pod(|| {
        // SAFETY: the child (a mount namespace of its own needs a process
        // of one thread) makes system calls only, on strings made before
        // the fork, and leaves with _exit; the parent waits for it.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let code = (|| {
                    let none = std::ptr::null();
                    let create = |p: &std::ffi::CString| {
                        let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                        fd >= 0 && libc::close(fd) == 0
                    };
                    let bind = |from: &std::ffi::CString, to: &std::ffi::CString| {
                        libc::mount(from.as_ptr(), to.as_ptr(), none, libc::MS_BIND, none.cast())
                            == 0
                    };
                    let private = libc::MS_REC | libc::MS_PRIVATE;
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(none, c"/".as_ptr(), none, private, none.cast()) != 0
                        || libc::mount(
                            c"t".as_ptr(),
                            tc.as_ptr(),
                            c"tmpfs".as_ptr(),
                            0,
                            none.cast(),
                        ) != 0
                        || libc::mkdir(td.as_ptr(), 0o755) != 0
                        || !create(&tf)
                    {
                        return 200;
                    }
                    for (from, to) in &singles {
                        if !create(from) || !create(to) || !bind(from, to) {
                            return 201;
                        }
                    }
                    if !bind(&td, &ddc) || libc::umount2(tc.as_ptr(), libc::MNT_DETACH) != 0 {
                        return 202;
                    }
                    let value = c"1";
                    if libc::setxattr(
                        ddf.as_ptr(),
                        c"trusted.pal".as_ptr(),
                        value.as_ptr().cast(),
                        1,
                        0,
                    ) == 0
                    {
                        0
                    } else {
                        std::io::Error::last_os_error()
                            .raw_os_error()
                            .unwrap_or(203)
                    }
                })();
                libc::_exit(code);
            }
            let mut status = 0;
            if pid < 0 || libc::waitpid(pid, &mut status, 0) != pid || !libc::WIFEXITED(status) {
                return -1;
            }
            libc::WEXITSTATUS(status)
        }
    })?;
    ensure!(
        (0..200).contains(&got),
        "setting up the mounts in a child failed: {got}"
    );
    ensure!(
        got == EPERM,
        "setxattr of the blocked file behind nine one-file mounts: errno {got}, want EPERM"
    );
    Ok(())
}

/// Under a file allowlist, a write to a file of an overlay's lower layer
/// makes overlayfs copy it up: it opens both layers' files and copies
/// their attributes with borrowed credentials, in the writing process,
/// through mounts the process's namespace does not hold. Those are not
/// the process's opens and writes (its own chmod on the overlay's path
/// was judged): the allowlist must not block them, as it would by the
/// paths they resolve to.
fn overlayfs_copy_up_under_a_file_allowlist_is_not_the_processs_own() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    let busybox = fs::read("/bin/busybox").context("the guest's busybox")?;
    let bin = lab.path("busybox");
    fs::write(&bin, &busybox)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let free = lab.file("lower/free")?;
    lab.file("lower/secret")?;
    // An attribute for the copy-up to copy: a write on the upper layer.
    ensure!(
        setxattr_errno(&free, "trusted.pal", b"1", false) == 0,
        "setting an attribute on the lower layer"
    );
    let (lower, layers, ov) = (lab.path("lower"), lab.path("layers"), lab.path("ov"));
    fs::create_dir_all(&layers)?;
    fs::create_dir_all(&ov)?;
    lab.apply(&format!(
        "{POLICY}  file:
    posture: Allowlist
    rules:
    - {{action: Allow, dirs: [{{path: {{dir}}/, recursive: true}}, {{path: /proc/, recursive: true}}, {{path: /dev/, recursive: true}}, {{path: /sys/fs/cgroup/, recursive: true}}]}}
    - {{action: Block, paths: [{{dir}}/ov/secret]}}
"
    ))?;
    // In a mount namespace of its own: the upper layer on a tmpfs that is
    // unmounted (lazily) once the overlay holds it, as a node's layers
    // are out of a pod's reach. Its file system stays in the namespace
    // through nine mounts of single files (more than the eight candidate
    // mounts the programs try) and one of a directory beside the layer,
    // as a pod's /etc/hosts and volumes come from the node's: none of
    // them reaches the upper layer, and overlayfs's work is told apart
    // before they are looked at.
    let binds = lab.path("binds");
    fs::create_dir_all(&binds)?;
    let script = format!(
        "mount -t tmpfs layers {layers} && mkdir {layers}/upper {layers}/work {layers}/d {binds}/d && \
         for i in 1 2 3 4 5 6 7 8 9; do echo >{layers}/f$i && echo >{binds}/f$i && mount --bind {layers}/f$i {binds}/f$i || exit 4; done && \
         mount --bind {layers}/d {binds}/d && \
         mount -t overlay ov -o lowerdir={lower},upperdir={layers}/upper,workdir={layers}/work {ov} && \
         umount -l {layers} && \
         if chmod 600 {ov}/secret; then echo 'chmod secret: allowed'; exit 3; fi && \
         chmod 600 {ov}/free && cat {ov}/free >/dev/null; s=$?; umount -l {ov}; exit $s"
    );
    let status = lab
        .in_pod(|| {
            Command::new(&bin)
                .arg0("busybox")
                .args(["unshare", "-m", &bin, "sh", "-c", &script])
                .status()
        })?
        .context("running busybox")?;
    ensure!(
        status.code() != Some(3),
        "chmod of the blocked file on the overlay was allowed"
    );
    ensure!(
        status.code() != Some(4),
        "setting up the bind mounts failed"
    );
    ensure!(
        status.success(),
        "the allowed chmod of a lower-layer file failed (its copy-up blocked?): {status}"
    );
    Ok(())
}

/// Whether busybox, run in the pod from the copy `bin`, succeeds at `args`.
fn busybox_as(lab: &Lab, bin: &str, args: &[&str]) -> anyhow::Result<bool> {
    // busybox picks its applet by argv[0]: called "busybox", by argv[1].
    lab.in_pod(|| Command::new(bin).arg0("busybox").args(args).status())?
        .map(|s| s.success())
        .with_context(|| format!("running busybox {args:?}"))
}

fn from_source_rules_hold_on_the_path_hooks_too() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    let busybox = fs::read("/bin/busybox").context("the guest's busybox")?;
    fs::create_dir_all(lab.path("bin"))?;
    let (cleaner, other) = (lab.path("bin/cleaner"), lab.path("bin/other"));
    for bin in [&cleaner, &other] {
        fs::write(bin, &busybox)?;
        fs::set_permissions(bin, fs::Permissions::from_mode(0o755))?;
    }
    lab.apply(&format!(
        "{POLICY}  file:
    rules:
    - {{action: Block, paths: [{{dir}}/keep/victim], fromSource: [{{dir}}/bin/cleaner]}}
"
    ))?;
    let victim = lab.file("keep/victim")?;
    let by_cleaner = busybox_as(&lab, &cleaner, &["rm", "-f", &victim])?;
    ensure!(
        !by_cleaner && Path::new(&victim).exists(),
        "unlink by the named program was not blocked"
    );
    // Any program renaming the directory would carry the file out from
    // under the cleaner's rule: its guard is every program's.
    let (keep, moved) = (lab.path("keep"), lab.path("moved"));
    let moved_by_other = busybox_as(&lab, &other, &["mv", &keep, &moved])?;
    ensure!(
        !moved_by_other && Path::new(&victim).exists(),
        "another program renamed the directory holding the cleaner's protected file"
    );
    let by_other = busybox_as(&lab, &other, &["rm", "-f", &victim])?;
    ensure!(
        by_other && !Path::new(&victim).exists(),
        "unlink by another program was blocked"
    );
    Ok(())
}

fn kubearmor_policies_and_rule_updates_take_effect_without_restarts() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    let secret = lab.file("etc/secret")?;
    let other = lab.file("etc/other")?;
    let kubearmor = "apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: ka, namespace: x}
spec:
  selector: {matchLabels: {pod: a}}
  file:
    matchPaths:
    - path: {dir}/etc/secret
  action: Block
";
    lab.apply(kubearmor)?;
    let got = lab.in_pod(|| (open_errno(&secret, false), open_errno(&other, false)))?;
    ensure!(got == (EPERM, 0), "KubeArmorPolicy: got {got:?}");
    // The same policy, now on the other file: swapped in one update.
    lab.apply(&kubearmor.replace("etc/secret", "etc/other"))?;
    let got = lab.in_pod(|| (open_errno(&secret, false), open_errno(&other, false)))?;
    ensure!(got == (0, EPERM), "after the update: got {got:?}");
    // Deleted: nothing blocked, and nothing left in the maps.
    lab.apply("")?;
    let got = lab.in_pod(|| (open_errno(&secret, false), open_errno(&other, false)))?;
    ensure!(got == (0, 0), "after the delete: got {got:?}");
    let pods: aya::maps::HashMap<aya::maps::MapData, u64, ebpf_common::lsm::PodSets> =
        palisade_tests::pinned(lab.pins()?, maps::LSM_PODS)?;
    ensure!(pods.keys().count() == 0, "a deleted policy left its pod");
    let rules: aya::maps::LpmTrie<
        aya::maps::MapData,
        ebpf_common::lsm::RuleData,
        ebpf_common::lsm::PathRule,
    > = palisade_tests::pinned(lab.pins()?, maps::LSM_RULES)?;
    ensure!(rules.keys().count() == 0, "a deleted policy left rules");
    Ok(())
}

/// Pods whose cgroups lie at five levels, one more than the programs look
/// a process's ancestors up at (`CGROUP_LEVELS`): the deepest four are
/// kept, and the pod at the fifth is reported not enforced, with why,
/// rather than counted as in force while its containers go unjudged.
fn pods_at_more_cgroup_levels_than_looked_up_are_reported_not_enforced() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    // x/a in the lab's cgroup (level 1); four pods nested below it.
    let below = ["x/b", "x/c", "y/a", "y/b"];
    let mut dirs = Vec::new();
    let mut path = lab.cgroup.clone();
    for n in 2..=5 {
        path = format!("{path}/l{n}");
        fs::create_dir(&path).with_context(|| format!("creating {path}"))?;
        dirs.push(path.clone());
    }
    let mut s: Snapshot = standard::snapshot();
    for p in &mut s.pods {
        let key = p.key();
        let cgroup = if key == "x/a" {
            Some(lab.cgroup.clone())
        } else {
            below
                .iter()
                .position(|k| *k == key)
                .map(|i| dirs[i].clone())
        };
        if cgroup.is_some() {
            std::sync::Arc::make_mut(p).cgroup = cgroup;
        }
    }
    for ns in ["x", "y"] {
        let yaml = format!(
            "apiVersion: palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {{name: files, namespace: {ns}}}
spec:
  podSelector: {{}}
  file:
    rules:
    - {{action: Block, paths: [{}/secret]}}
",
            lab.dir
        );
        for d in parse_documents(&yaml, "test.yaml", ns) {
            s.policies
                .push(d.map_err(|e| anyhow::anyhow!("{e}"))?.policy().into());
        }
    }
    let report = lab.state()?.apply(&compile_lsm(&s));
    for dir in dirs.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
    let report = report?;
    ensure!(report.errors.is_empty(), "{:?}", report.errors);
    let not_enforced: Vec<&String> = report.not_enforced.keys().collect();
    ensure!(
        not_enforced == ["x/a"],
        "only the pod at the shallowest level is out of reach: {:?}",
        report.not_enforced
    );
    let why = &report.not_enforced["x/a"];
    ensure!(
        why.contains("level 1") && why.contains("not judged"),
        "{why}"
    );
    Ok(())
}

/// The kernel's preemption model, switched at run time where the kernel
/// allows it (`PREEMPT_DYNAMIC`, through debugfs), and put back when
/// dropped (and debugfs unmounted if it was mounted for this).
struct Preemption {
    before: String,
    _debugfs: Debugfs,
}

impl Preemption {
    /// Switches to `mode` (`full`: kernel code, BPF programs included, may
    /// be preempted anywhere).
    fn set(mode: &str) -> anyhow::Result<Self> {
        let debugfs = Debugfs::mount()?;
        let control = Debugfs::PREEMPT;
        let modes = fs::read_to_string(control).with_context(|| {
            format!("{control}: this kernel cannot switch its preemption model (PREEMPT_DYNAMIC)")
        })?;
        // "none voluntary (full)": the current one in parentheses.
        let before = modes
            .split_whitespace()
            .find_map(|m| m.strip_prefix('(')?.strip_suffix(')'))
            .context("the current preemption model")?
            .to_owned();
        fs::write(control, mode).with_context(|| format!("writing {mode} to {control}"))?;
        Ok(Self {
            before,
            _debugfs: debugfs,
        })
    }
}

impl Drop for Preemption {
    fn drop(&mut self) {
        // Before debugfs goes (fields drop after this).
        let _ = fs::write(Debugfs::PREEMPT, &self.before);
    }
}

/// Pins the calling thread to CPU 0, where another pinned thread can
/// preempt it.
fn pin_to_cpu0() -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The programs build a path in per-CPU working memory. Where the kernel
/// preempts kernel code (`preempt=full`), a program can be preempted
/// midway and another task's run on the same CPU write over its path:
/// a run must then never decide by the path another left. Two threads of
/// the pod, on one CPU, change a file each, deep enough that the path walk
/// is long: one changes the mode of a blocked file, the other the owner of
/// an allowed one. The blocked file's changes must never pass; the allowed
/// one's may be refused only by a run that lost its working memory on
/// every try (blocked unjudged, counted as such on the chown hook), never
/// by the other file's rule.
fn a_preempted_run_never_decides_by_another_tasks_path() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    let depth = "d/".repeat(120);
    let blocked = lab.file(&format!("blocked/{depth}f"))?;
    let allowed = lab.file(&format!("allowed/{depth}f"))?;
    lab.apply(&format!(
        "{POLICY}  file:
    rules:
    - {{action: Block, dirs: [{{path: {{dir}}/blocked/, recursive: true}}]}}
"
    ))?;
    let counted = |lab: &Lab| -> anyhow::Result<(u64, u64, u64)> {
        Ok((
            lab.counted(reason::LSM_INTERLEAVED)?,
            lab.unjudged_blocks(hook::PATH_CHOWN)?,
            lab.runs_skipped(maps::programs::LSM_CHMOD)?,
        ))
    };
    let before = counted(&lab)?;
    let full = Preemption::set("full")?;
    let seconds = 8;
    let ((blocked_passed, blocked_runs), (allowed_refused, allowed_runs)) =
        lab.in_pod(|| {
            let run = |change: fn(&str) -> i32, path: String, want: i32| {
                std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
                    pin_to_cpu0()?;
                    let until = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
                    let (mut wrong, mut runs) = (0, 0);
                    while std::time::Instant::now() < until {
                        if change(&path) != want {
                            wrong += 1;
                        }
                        runs += 1;
                    }
                    Ok((wrong, runs))
                })
            };
            let a = run(chmod_errno, blocked.clone(), EPERM);
            let b = run(chown_errno, allowed.clone(), 0);
            match (a.join(), b.join()) {
                (Ok(Ok(a)), Ok(Ok(b))) => Ok((a, b)),
                (Ok(Err(e)), _) | (_, Ok(Err(e))) => Err(e),
                _ => bail!("a thread panicked"),
            }
        })??;
    drop(full);
    let after = counted(&lab)?;
    let (begun_again, unjudged, skipped) =
        (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    println!(
        "{} changes on one CPU under preempt=full: {begun_again} judgements begun again \
         (lsm_interleaved), {unjudged} chowns blocked unjudged, {skipped} chmod runs the \
         kernel skipped; chmod of the blocked file passed {blocked_passed} times, chown of \
         the allowed file refused {allowed_refused} times",
        blocked_runs + allowed_runs
    );
    // The kernel's recursion guard (on kernels that guard LSM programs)
    // skips a program entered again on a CPU: here only one thread goes
    // through the chmod program, so no chmod can be skipped, and none may
    // pass.
    ensure!(
        blocked_passed == 0,
        "{blocked_passed} of {blocked_runs} chmods of the blocked file passed ({skipped} \
         chmod runs skipped by the kernel)"
    );
    ensure!(
        allowed_refused <= unjudged,
        "{allowed_refused} of {allowed_runs} chowns of the allowed file were refused, only \
         {unjudged} of them unjudged: the rest were judged by the other file's rule"
    );
    // Without it, no run was preempted midway by the other thread, and the
    // test showed nothing.
    ensure!(
        begun_again > 0,
        "no run was taken over midway: the test did not exercise it"
    );
    Ok(())
}
