//! The install's capability set, proven: the daemon runs with exactly the
//! capabilities `manifests/daemonset.yaml` grants (read from that file,
//! the one place the set is written) and no others, as a container
//! runtime would start it (bounding set cut to the set, no_new_privs), and
//! loads, attaches, pins and enforces both a network policy and a file
//! rule. The file rule needs BPF LSM, so that proof runs in the QEMU guest
//! (natively it is reported as ignored with the reason).
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

/// A capability field of /proc/PID/status.
fn cap_field(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
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

fn cluster(lab: &BridgeLab, cgroup: &str, secret: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x, labels: {{ns: x}}}}\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{pod: a}}, annotations: {{palisade.dev/cgroup: '{cgroup}'}}}}\nstatus: {{podIP: {}}}\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {{name: b, namespace: x, labels: {{pod: b}}}}\nstatus: {{podIP: {}}}\n\
---\napiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: b-isolated, namespace: x}}\n\
spec:\n  podSelector: {{matchLabels: {{pod: b}}}}\n  policyTypes: [Ingress]\n  ingress: []\n\
---\napiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: a-no-secret, namespace: x}}\n\
spec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: []\n  file:\n    rules: [{{action: Block, paths: ['{secret}']}}]\n",
        lab.pods[0].ip, lab.pods[1].ip
    )
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
    let lab = BridgeLab::new(2)?;
    let _listeners: Vec<TcpListener> = lab
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
    daemon.write("cluster.yaml", &cluster(&lab, &cgroup.dir, &secret))?;
    let s = in_force(&mut daemon)?;
    let pid = daemon.pid();
    let (eff, prm, bnd) = (
        cap_field(pid, "CapEff")?,
        cap_field(pid, "CapPrm")?,
        cap_field(pid, "CapBnd")?,
    );
    println!(
        "daemon {pid}: CapEff {eff:#x} CapPrm {prm:#x} CapBnd {bnd:#x} (the DaemonSet's {caps:?} = {wanted:#x})"
    );
    ensure!(
        eff == wanted && prm == wanted && bnd == wanted,
        "the daemon ran with other capabilities than the DaemonSet's"
    );
    ensure!(s["ready"] == true, "{s}");
    ensure!(reaches(&lab, 1, 0)?, "b -> a: a is not isolated");
    ensure!(!reaches(&lab, 0, 1)?, "a -> b: b admits nothing");
    if lsm {
        ensure!(s["lsm"] == "enforcing", "process and file rules: {s}");
        ensure!(s["lsm_pods"]["x/a"] == "in force", "{s}");
        ensure!(
            cgroup.open_errno(&secret)? == libc::EPERM,
            "reading the blocked file from pod a's cgroup fails with EPERM"
        );
        ensure!(fs::read(&secret).is_ok(), "outside the pod the file reads");
    }
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
        daemon.write("cluster.yaml", &cluster(&lab, &cgroup.dir, "/nonexistent"))?;
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
