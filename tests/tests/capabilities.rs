//! The install's capability set, proven: the daemon runs with exactly the
//! capabilities `manifests/daemonset.yaml` grants (read from that file,
//! the one place the set is written) and no others, as a container
//! runtime would start it (bounding set cut to the set, no_new_privs), and
//! loads, attaches, pins and enforces both a network policy and a file
//! rule. The file rule needs BPF LSM, so that proof runs in the QEMU guest
//! (natively it is reported as ignored with the reason).
//!
//! Once started, the daemon drops what the rest of its run does not need
//! (`palisade::node::capabilities`): every thread's effective and permitted
//! sets must then be exactly what this kernel still needs after loading
//! (`CAP_BPF` before 5.19, `CAP_NET_ADMIN` without TCX, so nothing on 6.6
//! and later, `NET_ADMIN` on the guest's 6.1), `PERFMON` gone, and with
//! that alone the daemon attaches to a pod added after the drop, enforces
//! its policy, puts a policy change in force and serves its metrics from
//! the pinned maps.
//!
//! Then, natively, each capability of the set is taken away in turn, and
//! the daemon must fail to put the network policy in force: the set has
//! nothing to spare (each one is needed for the network programs already).
//!
//! The daemon is started through this test binary acting as a wrapper
//! (`PALISADE_CAPS_EXEC`): it cuts its bounding set, sets no_new_privs and
//! execs the real `palisade` with the lab's arguments, so the lab's
//! `Enforcer` runs it unchanged.

use std::{
    ffi::CString,
    fs,
    io::ErrorKind,
    net::TcpListener,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use palisade::node::capabilities::threads;
use palisade_lab::enforcer::{DaemonArgs, Enforcer};
use palisade_tests::{
    BridgeLab, TempPins,
    harness::{self, Needs},
    in_netns,
    install::{capabilities, capability_number},
    palisade_bin, unique,
};

const EXEC: &str = "PALISADE_CAPS_EXEC";
const KEEP: &str = "PALISADE_CAPS_KEEP";
const PORT: u16 = 8080;

fn main() {
    if let Ok(bin) = std::env::var(EXEC) {
        let e = exec_with_capabilities(&bin);
        eprintln!("capability wrapper: {e:#}");
        std::process::exit(127);
    }
    harness::main(&[
        (
            "the_daemonset_capabilities_load_attach_and_enforce_network_and_file_rules",
            Needs::BpfLsm,
            the_daemonset_capabilities_load_attach_and_enforce_network_and_file_rules,
        ),
        (
            "natively_the_daemonset_capabilities_put_the_network_policy_in_force",
            Needs::Native,
            natively_the_daemonset_capabilities_put_the_network_policy_in_force,
        ),
        (
            "without_any_one_of_them_the_daemon_fails",
            Needs::Native,
            without_any_one_of_them_the_daemon_fails,
        ),
    ])
}

/// The wrapper: keeps only the capabilities `KEEP` numbers, as a runtime
/// does for a container with `drop: [ALL]` and `add:` them, then becomes
/// the daemon. Returns only on failure.
fn exec_with_capabilities(bin: &str) -> anyhow::Error {
    let keep: Vec<u32> = std::env::var(KEEP)
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in (0..=last).filter(|c| !keep.contains(c)) {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } != 0 {
            return anyhow::anyhow!(
                "dropping capability {cap}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return anyhow::anyhow!("no_new_privs: {}", std::io::Error::last_os_error());
    }
    let args: Vec<CString> = std::iter::once(bin.to_owned())
        .chain(std::env::args().skip(1))
        .filter_map(|a| CString::new(a).ok())
        .collect();
    match nix::unistd::execv(&args[0], &args) {
        Ok(never) => match never {},
        Err(e) => anyhow::anyhow!("exec {bin}: {e}"),
    }
}

/// The mask of the named capabilities.
fn mask(names: &[String]) -> anyhow::Result<u64> {
    names.iter().try_fold(0u64, |m, name| {
        let n = capability_number(name).with_context(|| format!("unknown capability {name}"))?;
        Ok(m | 1 << n)
    })
}

/// The daemon, started through the wrapper with `caps` only.
fn start(
    lab: &BridgeLab,
    pins: &TempPins,
    dir: &Path,
    caps: &[String],
) -> anyhow::Result<Enforcer> {
    let numbers: Vec<String> = caps
        .iter()
        .map(|c| capability_number(c).map(|n| n.to_string()))
        .collect::<Option<_>>()
        .context("unknown capability")?;
    // SAFETY: the tests run one at a time and no other thread reads the
    // environment meanwhile.
    unsafe {
        std::env::set_var(EXEC, palisade_bin()?);
        std::env::set_var(KEEP, numbers.join(","));
    }
    let me = std::env::current_exe()?;
    let started =
        Enforcer::start_with(&me, &lab.node, dir, pins.pins.base(), DaemonArgs::default());
    // SAFETY: as above.
    unsafe {
        std::env::remove_var(EXEC);
        std::env::remove_var(KEEP);
    }
    started
}

/// Commits and waits for the revision in force; longer than the fixtures'
/// limit, since under the guest's TCG the verifier takes over a minute on
/// the LSM object.
fn in_force(daemon: &mut Enforcer) -> anyhow::Result<serde_json::Value> {
    let revision = daemon.commit()?.to_string();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if let Ok(s) = daemon.status()
            && s["revision"] == revision.as_str()
            && s["ready"] == true
        {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!(
                "revision {revision} not in force within 240 s: {:?}\n{}",
                daemon.status().ok(),
                daemon.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the daemon needs once it has loaded, on this kernel: `BPF` where
/// every bpf(2) command is gated (before 5.19), `NET_ADMIN` where TC
/// attaches over rtnetlink (no TCX, before 6.6).
fn needed_after_start() -> anyhow::Result<Vec<String>> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (
        parts.next().context("kernel release")?,
        parts.next().context("kernel release")?,
    );
    let mut needed = Vec::new();
    if version < (5, 19) {
        needed.push("BPF".to_owned());
    }
    if version < (6, 6) {
        needed.push("NET_ADMIN".to_owned());
    }
    Ok(needed)
}

/// The names in a JSON list.
fn listed(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Pod a's cgroup, and the file its rule blocks.
struct PodCgroup {
    dir: String,
}

impl PodCgroup {
    fn new() -> anyhow::Result<Self> {
        let dir = format!("/sys/fs/cgroup/{}", unique("palisade-caps-"));
        fs::create_dir(&dir).with_context(|| format!("creating {dir}"))?;
        Ok(Self { dir })
    }

    /// The errno of opening `path` for reading from inside the cgroup (0:
    /// it opened).
    fn open_errno(&self, path: &str) -> anyhow::Result<i32> {
        let me = std::process::id().to_string();
        let home = fs::read_to_string("/proc/self/cgroup")?
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| format!("/sys/fs/cgroup{p}"))
            .context("this process's cgroup")?;
        fs::write(format!("{}/cgroup.procs", self.dir), &me)?;
        let opened = fs::File::open(path);
        fs::write(format!("{home}/cgroup.procs"), &me)?;
        Ok(match opened {
            Ok(_) => 0,
            Err(e) if e.kind() == ErrorKind::NotFound => bail!("{path} is missing"),
            Err(e) => e.raw_os_error().unwrap_or(-1),
        })
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Pods a and b (and c, when the lab has a third): b admits nothing (with
/// `b_admits_a`, pod a only), c admits pod a only, and pod a may not read
/// `secret`.
fn cluster(lab: &BridgeLab, cgroup: &str, secret: &str, b_admits_a: bool) -> String {
    let from_a = format!(
        "[{{from: [{{podSelector: {{matchLabels: {{pod: a}}}}}}], ports: [{{port: {PORT}}}]}}]"
    );
    let b_ingress = if b_admits_a { from_a.as_str() } else { "[]" };
    let mut text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{ns: x}}}}\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{pod: a}}, annotations: {{palisade.dev/cgroup: '{cgroup}'}}}}\nstatus: {{podIP: {}}}\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {{name: b, namespace: x, labels: {{pod: b}}}}\nstatus: {{podIP: {}}}\n\
---\napiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: b-isolated, namespace: x}}\n\
spec:\n  podSelector: {{matchLabels: {{pod: b}}}}\n  policyTypes: [Ingress]\n  ingress: {b_ingress}\n\
---\napiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: a-no-secret, namespace: x}}\n\
spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: []\n  file:\n    rules: [{{action: Block, paths: ['{secret}']}}]\n",
        lab.pods[0].ip, lab.pods[1].ip
    );
    if let Some(c) = lab.pods.get(2) {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: c, namespace: x, labels: {{pod: c}}}}\nstatus: {{podIP: {}}}\n\
---\napiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: c-from-a, namespace: x}}\n\
spec:\n  podSelector: {{matchLabels: {{pod: c}}}}\n  policyTypes: [Ingress]\n  ingress: {from_a}\n",
            c.ip
        ));
    }
    text
}

fn reaches(lab: &BridgeLab, from: usize, to: usize) -> anyhow::Result<bool> {
    palisade_tests::reaches(lab, from, to, PORT, Duration::from_millis(700))
}

fn the_daemonset_capabilities_load_attach_and_enforce_network_and_file_rules() -> anyhow::Result<()>
{
    proof(true)
}

/// The same natively, where BPF LSM cannot run: the network half, the
/// baseline the native negative test below is measured against.
fn natively_the_daemonset_capabilities_put_the_network_policy_in_force() -> anyhow::Result<()> {
    proof(false)
}

fn proof(lsm: bool) -> anyhow::Result<()> {
    let caps = capabilities()?;
    let wanted = mask(&caps)?;
    let t = TempPins::new()?;
    let mut lab = BridgeLab::new(2)?;
    let mut listeners: Vec<TcpListener> = lab
        .pods
        .iter()
        .map(|p| in_netns(&p.netns, || TcpListener::bind((p.ip, PORT))))
        .collect::<Result<Result<_, _>, _>>()??;
    let cgroup = PodCgroup::new()?;
    let dir = std::env::temp_dir().join(unique("palisade-caps-"));
    fs::create_dir_all(&dir)?;
    let secret = dir.join("secret");
    fs::write(&secret, "s")?;
    let secret = secret.display().to_string();

    let mut daemon = start(&lab, &t, &dir, &caps)?;
    daemon.write("cluster.yaml", &cluster(&lab, &cgroup.dir, &secret, false))?;
    let s = in_force(&mut daemon)?;
    let pid = daemon.pid();
    let needed = needed_after_start()?;
    let kept = mask(&needed)?;
    let reported = &s["capabilities"];
    println!(
        "daemon {pid}, started with the DaemonSet's {caps:?} ({wanted:#x}); after start: {reported}"
    );
    ensure!(
        listed(&reported["kept"]) == needed,
        "the daemon kept {} where this kernel needs {needed:?} after loading",
        reported["kept"]
    );
    ensure!(
        reported.get("notes").is_none(),
        "the drop went wrong: {reported}"
    );
    // On a TCX kernel new veths get filters first, from the helper: it
    // holds NET_ADMIN alone, under no_new_privs, and nothing to pass on.
    let tcx = palisade::loader::features::Features::probe().tcx;
    let helper = &s["tc_filter_helper"];
    ensure!(
        helper.is_null() != tcx,
        "a filter helper where and only where TCX is: {s}"
    );
    if !helper.is_null() {
        palisade_tests::filter_helper_holds_net_admin_alone(&s, pid)?;
    }
    ensure!(
        caps.iter()
            .filter(|c| !needed.contains(c))
            .all(|c| listed(&reported["dropped_after_start"]).contains(c)),
        "the status does not name every capability dropped: {reported}"
    );
    let check_threads = |when: &str| -> anyhow::Result<()> {
        let threads = threads(&pid.to_string())?;
        ensure!(!threads.is_empty(), "process {pid} has no threads");
        for (thread, c) in threads {
            println!(
                "{when}: {thread}: CapEff {:#x} CapPrm {:#x} CapInh {:#x} CapAmb {:#x} CapBnd {:#x} NoNewPrivs {}",
                c.effective, c.permitted, c.inheritable, c.ambient, c.bounding, c.no_new_privs
            );
            ensure!(
                c.effective == kept && c.permitted == kept,
                "{thread} holds more or less than {needed:?} ({kept:#x})"
            );
            ensure!(
                c.inheritable == 0 && c.ambient == 0,
                "{thread}: inheritable or ambient left"
            );
            // The wrapper, as a runtime, grants no CAP_SETPCAP: the bounding
            // set stays the DaemonSet's, and no_new_privs keeps an exec from
            // regaining any of it.
            ensure!(
                c.bounding == wanted,
                "{thread}: bounding set {:#x}",
                c.bounding
            );
            ensure!(c.no_new_privs, "{thread}: no_new_privs is not set");
        }
        Ok(())
    };
    check_threads("after start")?;
    ensure!(s["ready"] == true, "{s}");
    ensure!(reaches(&lab, 1, 0)?, "b -> a: a is not isolated");
    ensure!(!reaches(&lab, 0, 1)?, "a -> b: b admits nothing");
    if lsm {
        // The kernel may have skipped runs (its recursion guard): that is
        // said after "enforcing"; a count that cannot be read is not.
        let lsm_state = s["lsm"].as_str().unwrap_or_default();
        ensure!(
            lsm_state == "enforcing" || lsm_state.starts_with("enforcing, but the kernel skipped"),
            "process and file rules: {s}"
        );
        ensure!(s["lsm_pods"]["x/a"] == "in force", "{s}");
        ensure!(
            cgroup.open_errno(&secret)? == libc::EPERM,
            "reading the blocked file from pod a's cgroup fails with EPERM"
        );
        ensure!(fs::read(&secret).is_ok(), "outside the pod the file reads");
    }

    // With only what it kept: a pod whose veth appears now gets the
    // programs and its policy...
    let c = lab.add_pod()?;
    listeners.push(in_netns(&c.netns, || TcpListener::bind((c.ip, PORT)))??);
    daemon.write("cluster.yaml", &cluster(&lab, &cgroup.dir, &secret, false))?;
    let s = in_force(&mut daemon)?;
    ensure!(
        s["endpoints"].get("x/c").is_some(),
        "pod c is not placed: {s}"
    );
    ensure!(reaches(&lab, 0, 2)?, "a -> c: c admits a");
    ensure!(!reaches(&lab, 1, 2)?, "b -> c: c admits only a");
    // ...a policy change lands...
    daemon.write("cluster.yaml", &cluster(&lab, &cgroup.dir, &secret, true))?;
    in_force(&mut daemon)?;
    ensure!(reaches(&lab, 0, 1)?, "a -> b: b admits a now");
    ensure!(!reaches(&lab, 2, 1)?, "c -> b: b admits only a");
    // ...and the metrics are read from the pinned maps.
    let scraped = daemon.scrape(&lab.node)?;
    for metric in [
        "palisade_map_entries{",
        "palisade_drops_total{",
        "palisade_ready 1",
    ] {
        ensure!(
            scraped.contains(metric),
            "the metrics endpoint lacks {metric}:\n{scraped}"
        );
    }
    println!("after start: pod c attached and enforced, b's new policy in force, metrics served");
    check_threads("at the end")?;
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// Without one capability of the set, the daemon either stops or never
/// puts the revision in force.
fn without_any_one_of_them_the_daemon_fails() -> anyhow::Result<()> {
    let caps = capabilities()?;
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let t = TempPins::new()?;
        let lab = BridgeLab::new(2)?;
        let cgroup = PodCgroup::new()?;
        let dir = std::env::temp_dir().join(unique("palisade-caps-"));
        fs::create_dir_all(&dir)?;
        let mut daemon = start(&lab, &t, &dir, &fewer)?;
        daemon.write(
            "cluster.yaml",
            &cluster(&lab, &cgroup.dir, "/nonexistent", false),
        )?;
        let revision = daemon.commit()?.to_string();
        let deadline = Instant::now() + Duration::from_secs(180);
        let outcome = loop {
            let gone = fs::read_to_string(format!("/proc/{}/stat", daemon.pid()))
                .map_or(true, |s| s.contains(") Z "));
            if gone {
                break "it exited".to_owned();
            }
            if let Ok(s) = daemon.status()
                && s["revision"] == revision.as_str()
            {
                if s["ready"] == true {
                    bail!("without {missing} the daemon still put the revision in force: {s}");
                }
                break format!("ready: {}, lsm: {}", s["ready"], s["lsm"]);
            }
            if Instant::now() > deadline {
                break "no pass completed in 180 s".to_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = daemon.log_tail();
        // The daemon's last word: why it stopped (a wrapper that could not
        // exec would prove nothing, so that is refused).
        let why = log.lines().last().unwrap_or_default().to_owned();
        ensure!(
            !why.contains("capability wrapper"),
            "the daemon never ran: {why}"
        );
        println!("without {missing}: {outcome}; {why}");
        drop(daemon);
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}
