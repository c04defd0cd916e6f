//! The daemon as it runs on a node, as a separate process in the node's
//! namespace with the file source: it finds the pods' veths on the bridge,
//! attaches, enforces the policies of the directory, reports each revision
//! when it is in force, repairs an entry deleted behind its back, and leaves
//! enforcement in place when it stops.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, MapData};
use ebpf_common::{
    datapath::{EndpointValue, FragKey, FragValue, PolicyKey, PolicyValue},
    maps,
};
use palisade::compile::desired::endpoint_ids;
use palisade_lab::enforcer::{DaemonArgs, Enforcer};
use palisade_tests::{
    B_FROM_A, BridgeLab, TempPins, answered, commit_and_wait, in_netns, ip_in, lab_cluster,
    palisade_bin, pinned, unique,
};

const WAIT: Duration = Duration::from_millis(700);
const PORT: u16 = 8080;

/// The daemon on the lab's node, with its source and status in `dir`.
fn start(
    lab: &BridgeLab,
    pins: &TempPins,
    dir: &Path,
    resync_ms: u64,
    extra: &[&str],
) -> anyhow::Result<Enforcer> {
    let args = DaemonArgs {
        resync_ms,
        extra: extra.iter().map(|&a| a.to_owned()).collect(),
        ..DaemonArgs::default()
    };
    Enforcer::start_with(&palisade_bin()?, &lab.node, dir, pins.pins.base(), args)
}

fn cluster(lab: &BridgeLab) -> String {
    lab_cluster(lab, &[])
}

/// A listener on `PORT` in every pod, to be kept for the test.
fn listen_in_every_pod(lab: &BridgeLab) -> anyhow::Result<Vec<TcpListener>> {
    Ok(lab
        .pods
        .iter()
        .map(|p| in_netns(&p.netns, || TcpListener::bind((p.ip, PORT))))
        .collect::<Result<Result<_, _>, _>>()??)
}

fn reaches(lab: &BridgeLab, from: usize, to: usize) -> anyhow::Result<bool> {
    palisade_tests::reaches(lab, from, to, PORT, WAIT)
}

#[test]
fn the_daemon_enforces_a_directory_of_policies_on_a_bridged_node() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(3)?;
    let dir = std::env::temp_dir().join(unique("palisade-daemon-"));
    // Listeners in every pod, kept for the whole test.
    let _listeners = listen_in_every_pod(&lab)?;

    let mut daemon = start(&lab, &t, &dir, 300, &[])?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    let s = commit_and_wait(&mut daemon)?;
    assert_eq!(s["endpoints"].as_object().map(|o| o.len()), Some(3), "{s}");
    assert!(reaches(&lab, 2, 1)?, "no policy: c reaches b");

    daemon.write("policy.yaml", B_FROM_A)?;
    let s = commit_and_wait(&mut daemon)?;
    assert!(reaches(&lab, 0, 1)?, "a -> b allowed");
    assert!(!reaches(&lab, 2, 1)?, "c -> b denied");
    assert!(reaches(&lab, 1, 2)?, "b -> c: c is not isolated");

    // Drift: b's allow entry disappears behind the daemon's back.
    let ids = endpoint_ids(["x/a", "x/b", "x/c"].into_iter());
    let mut exact: HashMap<MapData, PolicyKey, PolicyValue> = pinned(&t.pins, maps::POLICY_PORT)?;
    let endpoints: HashMap<MapData, u32, EndpointValue> = pinned(&t.pins, maps::ENDPOINTS)?;
    let key = exact
        .keys()
        .filter_map(Result::ok)
        .find(|k| k.endpoint == ids["x/b"])
        .context("b's entry")?;
    exact.remove(&key)?;
    // The repair swaps b's whole policy into its other generation: done
    // when the entry is back in whichever generation is live.
    let veth = s["endpoints"]["x/b"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .context("b's veth in the status")?;
    let repaired = || {
        endpoints.get(&veth, 0).is_ok_and(|live| {
            let again = PolicyKey {
                generation: live.generation(),
                ..key
            };
            exact.get(&again, 0).is_ok()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !repaired() {
        if Instant::now() > deadline {
            bail!("no resync repaired b's policy within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reaches(&lab, 0, 1)?, "the resync restored a -> b");

    // A bad edit: the broken policy keeps its last good version.
    daemon.write("policy.yaml", &B_FROM_A.replace("ports:", "portz:"))?;
    let s = commit_and_wait(&mut daemon)?;
    assert!(
        s["errors"][0].as_str().is_some_and(|e| e.contains("portz")),
        "{s}"
    );
    assert!(
        !reaches(&lab, 2, 1)?,
        "still denied under the last good version"
    );

    daemon.stop();
    assert!(!reaches(&lab, 2, 1)?, "enforcement outlives the daemon");
    assert!(reaches(&lab, 0, 1)?);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_new_pods_veth_passes_nothing_until_its_pod_is_known() -> anyhow::Result<()> {
    new_veth_quarantined_then_released(&[])
}

/// The same with `--tc-links-only`: a new veth's TCX links made off the
/// daemon's loop (on a TCX kernel; the same as the default without).
#[test]
fn with_links_only_a_new_pods_veth_passes_nothing_until_its_pod_is_known() -> anyhow::Result<()> {
    new_veth_quarantined_then_released(&["--tc-links-only"])
}

fn new_veth_quarantined_then_released(flags: &[&str]) -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let mut lab = BridgeLab::new(2)?;
    let dir = std::env::temp_dir().join(unique("palisade-quarantine-"));
    let target = &lab.pods[0];
    let _listener = in_netns(&target.netns, || TcpListener::bind((target.ip, PORT)))??;
    // A resync period far beyond the test: only a link event can make the
    // daemon see the new veth within the deadline below.
    let mut daemon = start(&lab, &t, &dir, 600_000, flags)?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    let s = commit_and_wait(&mut daemon)?;
    assert_eq!(s["quarantined"].as_array().map(Vec::len), Some(0), "{s}");

    // A veth appears on the bridge before the source knows its pod. Where
    // the kernel has TCX it gets filters from the helper, or (links only)
    // links made off the daemon's loop: the status lists it quarantined
    // only once they are in place, which a second thread checks all along,
    // read after read.
    let claims = Claims::watch(&dir, &t, &lab.node);
    lab.add_pod()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = daemon.status()?;
        if v["quarantined"].as_array().is_some_and(|q| q.len() == 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("no link event made the daemon quarantine the new veth: {v}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !reaches(&lab, 2, 0)?,
        "quarantined: the new pod reaches nothing"
    );

    // Its pod arrives in the source: no policy selects it, so it is free.
    daemon.write("cluster.yaml", &cluster(&lab))?;
    let s = commit_and_wait(&mut daemon)?;
    assert_eq!(s["quarantined"].as_array().map(Vec::len), Some(0), "{s}");
    assert!(reaches(&lab, 2, 0)?, "known and unselected: it reaches a");

    // A veth and its pod at once, as a pod is made: its endpoint is in
    // force only once its programs are attached.
    lab.add_pod()?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    let revision = daemon.commit()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (pod, revision) = ("x/d", revision.to_string());
    loop {
        let v = daemon.status()?;
        let in_force = v["revision"].as_str() == Some(revision.as_str())
            && v["endpoints"].get(pod).is_some()
            && v["not_enforced"].get(pod).is_none();
        if in_force {
            break;
        }
        if Instant::now() > deadline {
            bail!("{pod} not in force: {v}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let watched = claims.stop()?;
    println!(
        "{} status reads, every claim of enforcement with its links pinned or filters in place",
        watched.reads
    );
    assert!(watched.errors.is_empty(), "{:?}", watched.errors);
    assert!(reaches(&lab, 3, 0)?, "known and unselected: it reaches a");
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// Veths that go while their links are queued, being made or just made,
/// as pods deleted right after their sandbox was made: the daemon reports
/// no error for them (a veth that left is not a failed attach), keeps no
/// pin of theirs, and goes on linking, quarantining and releasing the
/// veths that stay.
#[test]
fn veths_gone_while_their_links_are_made_leave_no_pin_and_no_error() -> anyhow::Result<()> {
    if !tcx_or_skip() {
        return Ok(());
    }
    let t = TempPins::new()?;
    let lab = BridgeLab::new(1)?;
    let dir = std::env::temp_dir().join(unique("palisade-veth-storm-"));
    // The attach thread's links: what this test is about.
    let mut daemon = start(&lab, &t, &dir, 600_000, &["--tc-links-only"])?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    commit_and_wait(&mut daemon)?;
    let pod_veth = lab
        .node
        .run(|| palisade::netns::ifindex(&lab.pods[0].host_if))??;
    let bridge = bridge_of(&lab, &lab.pods[0].host_if)?;

    let claims = Claims::watch(&dir, &t, &lab.node);
    let (mut kept, mut caught_linking) = (Vec::new(), 0);
    for i in 0..24u64 {
        // The lab's node is this test's own: the names are free.
        let name = format!("storm{i}");
        ip_node(
            &lab,
            &format!("link add {name} type veth peer name {name}p"),
        )?;
        ip_node(&lab, &format!("link set {name} master {bridge} up"))?;
        let ifindex = lab.node.run(|| palisade::netns::ifindex(&name))??;
        match i % 4 {
            // Gone at once: before the daemon sees it, or with its job queued.
            0 => {}
            // Gone as soon as the status says its links are being made.
            1 => caught_linking += u32::from(being_linked(&daemon, ifindex)?),
            // Gone 0 to 22 ms later: being made, or made and not yet taken in.
            2 => std::thread::sleep(Duration::from_millis(i)),
            _ => {
                kept.push(ifindex);
                continue;
            }
        }
        ip_node(&lab, &format!("link del {name}"))?;
    }
    let mut want: Vec<u64> = kept.iter().map(|&i| u64::from(i)).collect();
    want.sort_unstable();
    settles(&daemon, &t, &want, pod_veth, "the veths that stayed")?;

    // The kept veths go too: nothing of theirs is left.
    for &ifindex in &kept {
        let name = lab.node.run(|| palisade::netns::ifname(ifindex))??;
        ip_node(&lab, &format!("link del {name}"))?;
    }
    settles(&daemon, &t, &[], pod_veth, "no storm veth")?;
    let watched = claims.stop()?;
    println!(
        "{} status reads through 24 veths, 18 gone early, {caught_linking} of 6 while the status said their links were being made",
        watched.reads
    );
    assert!(watched.errors.is_empty(), "{:?}", watched.errors);
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// Waits (up to 1 s) until the status lists the quarantine of `ifindex` not
/// in force because its links are being made; whether it did (it may be
/// linked before a status says so).
fn being_linked(daemon: &Enforcer, ifindex: u32) -> anyhow::Result<bool> {
    let name = palisade::compile::desired::quarantine_name(ifindex);
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        // A read that catches the file being replaced is tried again.
        if let Ok(v) = daemon.status() {
            if v["not_enforced"].get(&name).is_some() {
                return Ok(true);
            }
            if v["quarantined"]
                .as_array()
                .is_some_and(|q| q.contains(&ifindex.into()))
            {
                return Ok(false);
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(false)
}

/// Waits until the status lists exactly `quarantined` (in order), in force,
/// and the pinned links are those veths' and the pod's on `pod_veth`.
fn settles(
    daemon: &Enforcer,
    t: &TempPins,
    quarantined: &[u64],
    pod_veth: u32,
    what: &str,
) -> anyhow::Result<()> {
    let mut want_pins: Vec<String> = quarantined
        .iter()
        .copied()
        .chain([u64::from(pod_veth)])
        .flat_map(|i| ["tc-from-pod", "tc-to-pod"].map(|hook| format!("{hook}-{i}")))
        .collect();
    want_pins.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = daemon.status()?;
        let listed: Vec<u64> = v["quarantined"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        let mut pins: Vec<String> = fs::read_dir(t.pins.links())?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        pins.retain(|p| p.starts_with("tc-"));
        pins.sort_unstable();
        let settled = listed == quarantined
            && v["not_enforced"].as_object().is_some_and(|o| o.is_empty())
            && pins == want_pins;
        if settled {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: want quarantined {quarantined:?} and pins {want_pins:?}, have pins {pins:?}: {v}"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The bridge `iface` is a port of, in the lab's node.
fn bridge_of(lab: &BridgeLab, iface: &str) -> anyhow::Result<String> {
    let shown = lab.node.run(|| {
        std::process::Command::new("ip")
            .args(["-j", "link", "show", "dev", iface])
            .output()
    })??;
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout)?;
    Ok(v[0]["master"].as_str().context("no bridge")?.to_owned())
}

/// `ip ARGS` in the lab's node; fails with what `ip` said.
fn ip_node(lab: &BridgeLab, args: &str) -> anyhow::Result<()> {
    let out = lab.node.run(|| {
        std::process::Command::new("ip")
            .args(args.split_whitespace())
            .output()
    })??;
    anyhow::ensure!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Reads the daemon's status file every millisecond on a thread of its
/// own, and fails at the first read that lists a veth quarantined, or a
/// pod's endpoint in force, with a hook that has neither its TCX link
/// pinned nor (for a veth the status lists on filters) Palisade's filter
/// in the kernel's dump; keeps every error the reads list. Where the
/// kernel has no TCX a new veth gets filters within its pass: nothing to
/// check.
struct Claims {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Watched>>,
}

/// What [`Claims`] read.
struct Watched {
    reads: usize,
    errors: std::collections::BTreeSet<String>,
}

impl Claims {
    fn watch(dir: &Path, t: &TempPins, node: &palisade_lab::netns::Netns) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tcx = palisade::loader::features::Features::probe().tcx;
        let (status, pins) = (dir.join("status.json"), t.pins.clone());
        let node = node.try_clone();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let node = node?;
                let mut reads = 0;
                let mut errors = std::collections::BTreeSet::new();
                while tcx && !stop.load(Ordering::Relaxed) {
                    // A read that catches the file being replaced is skipped.
                    let Ok(v) = fs::read_to_string(&status)
                        .map_err(anyhow::Error::from)
                        .and_then(|text| Ok(serde_json::from_str::<serde_json::Value>(&text)?))
                    else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    reads += 1;
                    errors.extend(
                        v["errors"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(ToString::to_string),
                    );
                    let not_enforced = &v["not_enforced"];
                    let quarantined = v["quarantined"].as_array().cloned().unwrap_or_default();
                    let in_force = v["endpoints"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(pod, _)| not_enforced.get(pod.as_str()).is_none())
                        .map(|(_, ifindex)| ifindex.clone());
                    let on_filters = on_filters(&v);
                    for ifindex in quarantined.into_iter().chain(in_force) {
                        let ifindex = ifindex.as_u64().context("an ifindex")?;
                        for (hook, tc_hook) in ["tc-from-pod", "tc-to-pod"]
                            .into_iter()
                            .zip(palisade::loader::attach::TcHook::ALL)
                        {
                            let pin = pins.link(&format!("{hook}-{ifindex}"));
                            // On filters: the kernel's own dump shows the
                            // filter of Palisade's on that hook. A dump that
                            // fails fails the test, named as such.
                            let filtered = || -> anyhow::Result<bool> {
                                if !on_filters.contains(&ifindex) {
                                    return Ok(false);
                                }
                                node.run(|| {
                                    palisade::loader::filter_helper::filter_present(
                                        ifindex as u32,
                                        tc_hook,
                                    )
                                })?
                                .map_err(|errno| {
                                    anyhow::anyhow!(
                                        "dumping ifindex {ifindex}'s {hook} filters: {}",
                                        std::io::Error::from_raw_os_error(errno)
                                    )
                                })
                            };
                            // A veth deleted since the status was written
                            // has its pins taken by the pass that writes
                            // the next one.
                            let gone = || {
                                node.run(|| palisade::netns::ifname(ifindex as u32))
                                    .is_ok_and(|name| name.is_err())
                            };
                            // A move links and pins a hook before it takes
                            // that hook's filter off: a pin looked for again
                            // after the dump covers a move that ended between
                            // the first look and the dump.
                            anyhow::ensure!(
                                pin.exists() || filtered()? || pin.exists() || gone(),
                                "the status claims ifindex {ifindex} enforced without {} or a filter: {v}",
                                pin.display()
                            );
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(Watched { reads, errors })
            }
        });
        Self { stop, thread }
    }

    /// Stops watching: how many reads there were, and the errors they listed.
    fn stop(self) -> anyhow::Result<Watched> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the status watcher panicked"))?
    }
}

/// Veths (ifindex) the status lists on clsact filters.
fn on_filters(s: &serde_json::Value) -> Vec<u64> {
    s["tc_filters"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default()
}

/// Pod `pod`'s veth on pinned TCX links, with no filter of Palisade's
/// left (as `tc` shows them).
fn on_links(lab: &BridgeLab, t: &TempPins, pod: usize) -> anyhow::Result<()> {
    let name = &lab.pods[pod].host_if;
    let ifindex = lab.node.run(|| palisade::netns::ifindex(name))??;
    for pin in ["tc-from-pod", "tc-to-pod"] {
        let path = t.pins.link(&format!("{pin}-{ifindex}"));
        anyhow::ensure!(path.exists(), "{name}: no {}", path.display());
    }
    for side in ["ingress", "egress"] {
        anyhow::ensure!(
            !shows_palisade_filter(lab, name, side)?,
            "{name} {side}: a filter of Palisade's"
        );
    }
    Ok(())
}

/// Whether `tc filter show` of `side` of the node's `iface` names one of
/// Palisade's programs.
fn shows_palisade_filter(lab: &BridgeLab, iface: &str, side: &str) -> anyhow::Result<bool> {
    let shown = lab.node.run(|| {
        std::process::Command::new("tc")
            .args(["filter", "show", "dev", iface, side])
            .output()
    })??;
    Ok(String::from_utf8_lossy(&shown.stdout).contains("pal_tc_"))
}

fn keeps_net_admin(s: &serde_json::Value) -> bool {
    s["capabilities"]["kept"]
        .as_array()
        .is_some_and(|k| k.iter().any(|c| c == "NET_ADMIN"))
}

fn tcx_or_skip() -> bool {
    let tcx = palisade::loader::features::Features::probe().tcx;
    if !tcx {
        println!("skipped: no TCX on this kernel (every veth stays on clsact filters there)");
    }
    tcx
}

/// A daemon in force on `pods` bridged pods that listen on `PORT`, with
/// `B_FROM_A`, moving a veth from filters to links after `idle_ms` with
/// nothing to do. Bound in this order, the parts drop daemon first.
struct OnFilters {
    t: TempPins,
    lab: BridgeLab,
    dir: PathBuf,
    listeners: Vec<TcpListener>,
    daemon: Enforcer,
    status: serde_json::Value,
}

fn b_from_a_on_filters(pods: usize, name: &str, idle_ms: u64) -> anyhow::Result<OnFilters> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(pods)?;
    let dir = std::env::temp_dir().join(unique(name));
    let listeners = listen_in_every_pod(&lab)?;
    let idle = idle_ms.to_string();
    let mut daemon = start(&lab, &t, &dir, 600_000, &["--tc-move-when-idle-ms", &idle])?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    daemon.write("policy.yaml", B_FROM_A)?;
    let status = commit_and_wait(&mut daemon)?;
    Ok(OnFilters {
        t,
        lab,
        dir,
        listeners,
        daemon,
        status,
    })
}

/// On a TCX kernel a new veth is enforced by clsact filters, added by the
/// daemon's filter helper, from the pass that finds it and, once the
/// daemon is idle, by pinned TCX links instead, with no filter left; the
/// policy's verdicts and the quarantine are the same before and after.
/// The daemon keeps no capability; the helper `CAP_NET_ADMIN` alone.
#[test]
fn a_new_veth_gets_filters_from_the_helper_then_moves_to_links() -> anyhow::Result<()> {
    if !tcx_or_skip() {
        return Ok(());
    }
    // Idle 1.5 s before a move: far more than a status poll can miss.
    let OnFilters {
        t,
        mut lab,
        dir,
        listeners: _listeners,
        mut daemon,
        status: s,
    } = b_from_a_on_filters(2, "palisade-filters-first-", 1500)?;
    assert!(
        !keeps_net_admin(&s),
        "the helper adds and removes the filters: {s}"
    );
    palisade_tests::filter_helper_holds_net_admin_alone(&s, daemon.pid())?;
    assert_eq!(on_filters(&s).len(), 2, "on filters first: {s}");
    assert!(reaches(&lab, 0, 1)?, "a -> b allowed, on filters");

    let wait_moved = |daemon: &Enforcer| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = daemon.status()?;
            if on_filters(&s).is_empty() && s["errors"].as_array().is_some_and(Vec::is_empty) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("veths still on filters after 15 s: {s}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_moved(&daemon)?;
    for pod in 0..2 {
        on_links(&lab, &t, pod)?;
    }
    assert!(reaches(&lab, 0, 1)?, "a -> b allowed, on links");
    assert!(reaches(&lab, 1, 0)?, "b -> a allowed, on links");

    // A veth that arrives later: quarantined on filters by the pass that
    // finds it, then moved.
    lab.add_pod()?;
    let name = lab.pods[2].host_if.clone();
    let veth = lab.node.run(|| palisade::netns::ifindex(&name))??;
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = daemon.status()?;
        if s["quarantined"]
            .as_array()
            .is_some_and(|q| q.iter().any(|i| i.as_u64() == Some(veth.into())))
        {
            break s;
        }
        if Instant::now() > deadline {
            bail!("the new veth was not quarantined: {s}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        on_filters(&s).contains(&veth.into()),
        "quarantined on filters: {s}"
    );
    assert!(
        !reaches(&lab, 2, 0)?,
        "quarantined: the new pod reaches nothing"
    );
    wait_moved(&daemon)?;
    on_links(&lab, &t, 2)?;
    assert!(!reaches(&lab, 2, 0)?, "still quarantined, on links");
    // Its pod known: what blocked it was the quarantine, now on links.
    daemon.write("cluster.yaml", &cluster(&lab))?;
    let s = commit_and_wait(&mut daemon)?;
    assert!(
        reaches(&lab, 2, 0)?,
        "known and unselected: it reaches a: {s}"
    );
    assert!(!reaches(&lab, 2, 1)?, "c -> b denied, on links");
    assert!(reaches(&lab, 0, 1)?, "a -> b still allowed");
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// A filter helper that stops (killed here) is not asked again: a veth
/// that appears later gets its TCX links in the pass that finds it, is
/// enforced, and carries no filter; the status no longer lists a helper.
/// The veths on filters stay there, idle or not: a move would leave
/// filters this daemon cannot remove behind the links.
#[test]
fn when_the_filter_helper_stops_new_veths_get_links() -> anyhow::Result<()> {
    helper_stops_then_a_veth_comes(nix::sys::signal::Signal::SIGKILL)
}

/// The same with a helper that stops answering (stopped, here): the
/// request for the new veth is given up on after 5 s, the helper killed,
/// and that veth linked in that same pass: no attach error is counted
/// (a later pass, which the link events that follow a new veth bring
/// soon, would have linked it too, after a failed attach).
#[test]
fn a_filter_helper_that_stops_answering_is_given_up_on() -> anyhow::Result<()> {
    helper_stops_then_a_veth_comes(nix::sys::signal::Signal::SIGSTOP)
}

fn helper_stops_then_a_veth_comes(signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    if !tcx_or_skip() {
        return Ok(());
    }
    // Idle 1.5 s before a move: time to kill the helper first.
    let OnFilters {
        t,
        mut lab,
        dir,
        listeners: _listeners,
        mut daemon,
        status: s,
    } = b_from_a_on_filters(2, "palisade-helper-stops-", 1500)?;
    assert_eq!(on_filters(&s).len(), 2, "{s}");
    let helper = s["tc_filter_helper"]["pid"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no helper: {s}"))?;
    let helper = nix::unistd::Pid::from_raw(i32::try_from(helper)?);
    nix::sys::signal::kill(helper, signal)?;

    lab.add_pod()?;
    let _late = in_netns(&lab.pods[2].netns, || {
        TcpListener::bind((lab.pods[2].ip, PORT))
    })??;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    let s = commit_and_wait(&mut daemon)?;
    assert!(s["tc_filter_helper"].is_null(), "{s}");
    assert!(
        s["errors"].as_array().is_some_and(Vec::is_empty),
        "no error: the new veth was linked instead: {s}"
    );
    // Linked in the pass whose request the helper failed, not by a later
    // one: no pass reported the veth's attach as failed.
    let metrics = daemon.scrape(&lab.node)?;
    let counted: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("palisade_errors_total{kind=\"attach\"} "))
        .collect();
    assert!(
        counted == ["0"],
        "attach errors counted {counted:?} (one series, 0): {metrics}"
    );
    on_links(&lab, &t, 2)?;
    assert_eq!(
        on_filters(&s).len(),
        2,
        "the first two stay on filters: {s}"
    );
    assert!(reaches(&lab, 2, 0)?, "c -> a allowed (a is unselected)");
    assert!(!reaches(&lab, 2, 1)?, "c -> b denied, on links");
    assert!(reaches(&lab, 0, 1)?, "a -> b allowed, on filters");
    // Idle well past the move's 1.5 s: nothing moved, nothing failed.
    std::thread::sleep(Duration::from_millis(3000));
    let s = daemon.status()?;
    assert_eq!(on_filters(&s).len(), 2, "still on filters: {s}");
    assert!(
        s["errors"].as_array().is_some_and(Vec::is_empty),
        "no move tried: {s}"
    );
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// A daemon started with `--tc-links-only` on veths an earlier daemon
/// left on filters: it links them and has its filter helper remove the
/// filters (a helper for that run only), and the verdicts hold.
#[test]
fn a_links_only_daemon_removes_the_filters_left_to_it() -> anyhow::Result<()> {
    if !tcx_or_skip() {
        return Ok(());
    }
    // Never idle long enough to move: every veth stays on filters.
    let OnFilters {
        t,
        lab,
        dir,
        listeners: _listeners,
        mut daemon,
        status: s,
    } = b_from_a_on_filters(3, "palisade-filters-left-", 600_000)?;
    assert_eq!(on_filters(&s).len(), 3, "{s}");

    let bin = palisade_tests::palisade_bin()?;
    let links_only = vec!["--tc-links-only".to_owned()];
    daemon.restart_with(&bin, &lab.node, links_only.clone())?;
    let s = commit_and_wait(&mut daemon)?;
    assert!(on_filters(&s).is_empty(), "{s}");
    assert!(!keeps_net_admin(&s), "the helper removed the filters: {s}");
    palisade_tests::filter_helper_holds_net_admin_alone(&s, daemon.pid())?;
    for pod in 0..3 {
        on_links(&lab, &t, pod)?;
    }
    assert!(reaches(&lab, 0, 1)?, "a -> b allowed");
    assert!(!reaches(&lab, 2, 1)?, "c -> b denied");

    // Nothing left to remove: the next start needs no helper.
    daemon.restart_with(&bin, &lab.node, links_only)?;
    let s = commit_and_wait(&mut daemon)?;
    assert!(!keeps_net_admin(&s), "{s}");
    assert!(s["tc_filter_helper"].is_null(), "{s}");
    assert!(!reaches(&lab, 2, 1)?, "c -> b still denied");
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// The `tc_filters` of `palisade status --json` run in the lab's node.
fn status_tc_filters(lab: &BridgeLab, t: &TempPins) -> anyhow::Result<Vec<String>> {
    let bin = palisade_bin()?;
    let out = lab.node.run(|| {
        std::process::Command::new(&bin)
            .arg("--pin-base")
            .arg(t.pins.base())
            .args(["status", "--json"])
            .output()
    })??;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["tc_filters"]
        .as_array()
        .context("tc_filters")?
        .iter()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect())
}

/// The interfaces of the lab's node whose `tc filter show` names one of
/// Palisade's programs.
fn with_filters(lab: &BridgeLab) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for pod in &lab.pods {
        for side in ["ingress", "egress"] {
            if shows_palisade_filter(lab, &pod.host_if, side)? {
                found.push(format!("{} {side}", pod.host_if));
            }
        }
    }
    Ok(found)
}

/// `palisade unload` with no interface named finds the veths a daemon left
/// on clsact filters (on a TCX kernel those not yet moved to links, or any
/// veth on a kernel without TCX) and removes the filters, with the pinned
/// links: enforcement outlives the daemon, and ends with the unload.
#[test]
fn unload_finds_and_removes_the_filters_a_daemon_left() -> anyhow::Result<()> {
    // Never idle long enough to move: every veth stays on filters (on
    // any kernel: without TCX there are no links to move to).
    let OnFilters {
        t,
        lab,
        dir,
        listeners: _listeners,
        mut daemon,
        ..
    } = b_from_a_on_filters(3, "palisade-unload-", 600_000)?;
    daemon.stop();
    assert_eq!(with_filters(&lab)?.len(), 6, "two filters a veth");
    assert!(!reaches(&lab, 2, 1)?, "c -> b denied after the daemon");
    // `palisade status` names them, as it names pinned links.
    let listed = status_tc_filters(&lab, &t)?;
    for pod in &lab.pods {
        assert!(
            listed
                .iter()
                .any(|f| f.starts_with(&format!("{} ", pod.host_if))),
            "{} not in {listed:?}",
            pod.host_if
        );
    }

    let out = std::process::Command::new(palisade_bin()?)
        .arg("--pin-base")
        .arg(t.pins.base())
        .arg("unload")
        .arg("--netns")
        // This process's descriptor, which the child can open by its path.
        .arg(format!("/proc/{}/fd/{}", std::process::id(), lab.node.fd()))
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        printed.matches("removed 2 clsact filters from").count(),
        3,
        "{printed}"
    );
    assert!(with_filters(&lab)?.is_empty(), "{printed}");
    assert!(status_tc_filters(&lab, &t)?.is_empty());
    assert!(reaches(&lab, 2, 1)?, "c -> b once nothing enforces");
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// The kernel collects the node's stale neighbour entries once it holds
/// more than `gc_thresh1` of them, and a bridged pod is found through its
/// entry: a known pod must keep its veth (never have it quarantined) while
/// its entry is missing or wrong, and only while that veth exists. It is
/// not asked for either: a nudge is a broadcast the bridge floods to every
/// pod, and the kernel collects such entries in batches.
#[test]
fn a_known_pod_keeps_its_veth_while_the_node_cannot_resolve_it() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(2)?;
    let dir = std::env::temp_dir().join(unique("palisade-sticky-"));
    let target = &lab.pods[0];
    let _listener = in_netns(&target.netns, || TcpListener::bind((target.ip, PORT)))??;
    let mut daemon = start(&lab, &t, &dir, 200, &[])?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    let s = commit_and_wait(&mut daemon)?;
    let veth = s["endpoints"]["x/a"].as_u64().context("a placed")?;
    // Five passes later, a is still on its veth, and no veth quarantined.
    let kept = || -> anyhow::Result<()> {
        let passes = passes_after(&daemon, 5)?;
        assert_eq!(Some(veth), passes["endpoints"]["x/a"].as_u64(), "{passes}");
        assert_eq!(
            passes["quarantined"].as_array().map(Vec::len),
            Some(0),
            "{passes}"
        );
        Ok(())
    };

    // Its entry collected: the full passes (one each 200 ms) keep a where
    // it is, and none nudges it back.
    ip_in(&lab.node, &format!("neigh flush to {} dev br0", target.ip))?;
    kept()?;
    assert_eq!(
        neighbour_mac(&lab.node, target.ip)?,
        None,
        "a pass asked for a known pod's address"
    );

    // A permanent entry with a MAC no bridge port has: no nudge resolves it.
    ip_in(
        &lab.node,
        &format!(
            "neigh replace {} dev br0 lladdr 02:00:00:00:99:99 nud permanent",
            target.ip
        ),
    )?;
    kept()?;
    assert!(
        reaches(&lab, 1, 0)?,
        "b still reaches a through a's kept veth {veth}"
    );

    // Its veth gone, a is no longer placed anywhere.
    ip_in(&lab.node, &format!("link del {}", target.host_if))?;
    let s = passes_after(&daemon, 3)?;
    assert!(s["endpoints"].get("x/a").is_none(), "{s}");
    assert!(
        s["unplaced"]
            .as_array()
            .is_some_and(|u| u.iter().any(|p| p == "x/a")),
        "{s}"
    );
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// A known pod back on a new veth with its address before its old veth
/// went (its sandbox made again) is found on the new one, though the
/// node's neighbour entry for it is gone: a veth no pod holds makes the
/// full pass ask for the pods it kept.
#[test]
fn a_known_pod_back_on_a_new_veth_is_found_there() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let mut lab = BridgeLab::new(2)?;
    let dir = std::env::temp_dir().join(unique("palisade-moved-"));
    let mut daemon = start(&lab, &t, &dir, 200, &[])?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    let s = commit_and_wait(&mut daemon)?;
    let old = s["endpoints"]["x/a"].as_u64().context("a placed")?;
    let ip = lab.pods[0].ip;
    let shown = ip_output(&lab.pods[0].netns, "-4 -o addr show dev eth0")?;
    let prefix = shown
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split_once('/'))
        .map(|(_, p)| p.to_owned())
        .context("a's prefix")?;

    // The new sandbox: a veth on the bridge whose namespace holds a's
    // address; the old one keeps its veth but not the address.
    let moved = lab.add_pod()?;
    let host_if = moved.host_if.clone();
    ip_in(&moved.netns, &format!("addr add {ip}/{prefix} dev eth0"))?;
    ip_in(
        &lab.pods[0].netns,
        &format!("addr del {ip}/{prefix} dev eth0"),
    )?;
    ip_in(&lab.node, &format!("neigh flush to {ip} dev br0"))?;
    let index: u64 = ip_output(&lab.node, &format!("-o link show {host_if}"))?
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .context("the new veth's index")?;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = daemon.status()?;
        if s["endpoints"]["x/a"].as_u64() == Some(index) {
            break;
        }
        if Instant::now() > deadline {
            bail!("a still on {old}, not on the new veth {index}: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// b may open nothing (egress isolated) and pushes on a connection a
/// opened: its packets pass on conntrack alone. A daemon of a new ABI
/// pins new maps; without the flows carried over, b's next push would be
/// judged as b opening a flow, and dropped until a spoke again.
#[test]
fn a_server_push_survives_an_abi_upgrade() -> anyhow::Result<()> {
    server_push_across(upgrade_abi)
}

/// The same from an ABI whose conntrack kept an entry per flow and local
/// end (`ebpf_common::CT_PER_END_SINCE`): its entries are converted into
/// halves of this one's. The older pins are this ABI's with their
/// conntrack rewritten in that layout, each end of each flow an entry.
#[test]
fn a_server_push_survives_an_upgrade_from_the_per_end_conntrack() -> anyhow::Result<()> {
    server_push_across(|daemon, t, lab| {
        daemon.stop();
        let older = palisade::paths::PinDir::with_abi(t.pins.base(), t.pins.abi() - 1);
        fs::rename(t.pins.root(), older.root())?;
        let mut ends = 0;
        for name in maps::CT {
            ends += per_end_layout(&older.map(name))?;
        }
        assert!(ends > 0, "no flow was tracked to convert");
        daemon.restart(&palisade_bin()?, &lab.node)?;
        commit_and_wait(daemon)?;
        assert!(!older.root().exists(), "the older ABI's pins were retired");
        Ok(())
    })
}

/// Replaces the conntrack map pinned at `path` by one of the per-end
/// layout holding its ends; returns how many.
fn per_end_layout(path: &Path) -> anyhow::Result<usize> {
    use ebpf_common::datapath::{Ct4Key, Ct6Key, CtEnd, CtValue};
    fn rewrite<K: aya::Pod>(path: &Path, side_at: usize) -> anyhow::Result<usize> {
        let info = aya::maps::MapInfo::from_pin(path)?;
        let entries: Vec<(K, CtValue)> = {
            let map = aya::maps::Map::from_map_data(MapData::from_pin(path)?)?;
            let map: HashMap<MapData, K, CtValue> = HashMap::try_from(map)?;
            map.iter().collect::<Result<_, _>>()?
        };
        fs::remove_file(path)?;
        palisade_tests::pin_raw_map(
            path,
            ebpf_common::maps::kind::LRU_HASH,
            size_of::<K>() as u32,
            size_of::<CtEnd>() as u32,
            info.max_entries(),
        )?;
        let map = aya::maps::Map::from_map_data(MapData::from_pin(path)?)?;
        let mut old: HashMap<MapData, K, CtEnd> = HashMap::try_from(map)?;
        let mut n = 0;
        for (key, value) in entries {
            for (at, end) in value.ends.iter().enumerate() {
                if end.endpoint == 0 {
                    continue;
                }
                let mut key = key;
                // SAFETY: `side_at` is the side byte's offset in `K`
                // (`the_conntrack_layout_is_the_one_ct_layout_since_names`).
                unsafe { *(&raw mut key).cast::<u8>().add(side_at) = at as u8 };
                old.insert(&key, end, 0)?;
                n += 1;
            }
        }
        Ok(n)
    }
    if path.ends_with(maps::CT4) {
        rewrite::<Ct4Key>(path, std::mem::offset_of!(Ct4Key, _pad))
    } else {
        rewrite::<Ct6Key>(path, std::mem::offset_of!(Ct6Key, _pad))
    }
}

/// b may open nothing; a opens a connection to b, b pushes on it, then
/// `upgrade` hands the node to a daemon of a new ABI, and b pushes again.
fn server_push_across(
    upgrade: impl FnOnce(&mut Enforcer, &TempPins, &BridgeLab) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};

    const B_OPENS_NOTHING: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-opens-nothing, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n";
    let t = TempPins::new()?;
    let lab = BridgeLab::new(2)?;
    let dir = std::env::temp_dir().join(unique("palisade-ct-carry-"));
    let (a, b) = (&lab.pods[0], &lab.pods[1]);
    let listener = in_netns(&b.netns, || TcpListener::bind((b.ip, PORT)))??;
    let mut daemon = start(&lab, &t, &dir, 300, &[])?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    daemon.write("policy.yaml", B_OPENS_NOTHING)?;
    commit_and_wait(&mut daemon)?;
    assert!(!reaches(&lab, 1, 0)?, "b opens nothing");

    let mut client = in_netns(&a.netns, || {
        TcpStream::connect_timeout(&SocketAddr::from((b.ip, PORT)), WAIT)
    })??;
    client.set_read_timeout(Some(Duration::from_secs(3)))?;
    let (mut server, _) = listener.accept()?;
    let mut byte = [0u8; 1];
    server.write_all(b"1")?;
    client.read_exact(&mut byte).context("b's first push")?;
    let ids = endpoint_ids(["x/a", "x/b"].into_iter());
    let (a_id, b_id) = (ids["x/a"], ids["x/b"]);
    let flow = ((a.ip, client.local_addr()?.port()), (b.ip, PORT));
    assert_eq!(
        ends_of(&t, flow)?,
        (a_id, b_id),
        "the flow's entry before the upgrade"
    );

    upgrade(&mut daemon, &t, &lab)?;
    assert_eq!(
        ends_of(&t, flow)?,
        (a_id, b_id),
        "the flow's entry after the upgrade"
    );
    // b tracked a flow opened in ingress: the carried flow marks it so,
    // or a drop cached for b's egress would keep its pushes from
    // conntrack (`ebpf_common::datapath::opened_index`).
    let marks: aya::maps::Array<MapData, u32> = pinned(&t.pins, maps::OPENED)?;
    let ingress = ebpf_common::datapath::direction::INGRESS;
    assert_eq!(
        marks.get(&ebpf_common::datapath::opened_index(b_id, ingress), 0)?,
        1,
        "the carried flow did not mark b as having tracked an ingress flow"
    );

    server.write_all(b"2")?;
    client
        .read_exact(&mut byte)
        .context("b's push after the upgrade never arrived")?;
    assert_eq!(&byte, b"2");
    assert!(!reaches(&lab, 1, 0)?, "b still opens nothing");
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// The endpoints of the two ends of the TCP flow between `a` and `b`, as
/// its conntrack entry holds them: `a`'s end first. The halves are found
/// by the order the datapath keys flows in (the address as its bytes
/// read natively, then the port; end 0 the lower side's), written out
/// here rather than taken from the code under test.
fn ends_of(t: &TempPins, (a, b): ((Ipv4Addr, u16), (Ipv4Addr, u16))) -> anyhow::Result<(u32, u32)> {
    use ebpf_common::datapath::{Ct4Key, CtValue};
    let order = |(ip, port): (Ipv4Addr, u16)| (u32::from_ne_bytes(ip.octets()), port);
    let a_is_lo = order(a) <= order(b);
    let (lo, hi) = if a_is_lo { (a, b) } else { (b, a) };
    let key = Ct4Key {
        lo: lo.0.octets(),
        hi: hi.0.octets(),
        lo_port: lo.1,
        hi_port: hi.1,
        protocol: libc::IPPROTO_TCP as u8,
        _pad: [0; 3],
    };
    let ct: HashMap<MapData, Ct4Key, CtValue> = pinned(&t.pins, maps::CT4)?;
    let value = ct.get(&key, 0).context("the flow has no entry")?;
    let [lo_end, hi_end] = value.ends.map(|e| e.endpoint);
    Ok(if a_is_lo {
        (lo_end, hi_end)
    } else {
        (hi_end, lo_end)
    })
}

/// The first fragment of a UDP datagram from a to b passes a daemon of one
/// ABI, the last a daemon of the next: the table of datagrams whose first
/// fragment passed is carried over (`sync::conntrack`), so b gets the
/// datagram whole. Without the copy the last fragment was dropped as
/// `drop_fragment_unknown`, and b got nothing.
#[test]
fn a_datagram_fragmented_across_an_abi_upgrade_is_delivered() -> anyhow::Result<()> {
    const B_FROM_A_UDP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-from-a-udp, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 8080, protocol: UDP}]}]\n";
    const PAYLOAD: &[u8; 16] = b"fragment carried";
    let t = TempPins::new()?;
    let lab = BridgeLab::new(2)?;
    let dir = std::env::temp_dir().join(unique("palisade-frag-carry-"));
    let (a, b) = (&lab.pods[0], &lab.pods[1]);
    let receiver = in_netns(&b.netns, || std::net::UdpSocket::bind((b.ip, 8080)))??;
    receiver.set_read_timeout(Some(Duration::from_secs(5)))?;
    // b's kernel keeps a datagram's fragments 30 s by default: room for a
    // slow guest's restart.
    in_netns(&b.netns, || {
        fs::write("/proc/sys/net/ipv4/ipfrag_time", "120")
    })??;
    let mut daemon = start(&lab, &t, &dir, 300, &[])?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    daemon.write("policy.yaml", B_FROM_A_UDP)?;
    commit_and_wait(&mut daemon)?;
    let send = |fragment: &[u8]| in_netns(&a.netns, || send_raw(b.ip, fragment))?;
    let (first, last) = fragments(a.ip, b.ip, 0x5a5a, 40_000, 8080, PAYLOAD);

    send(&first)?;
    // Judged and recorded by the running ABI's programs before it goes.
    let recorded = || -> anyhow::Result<usize> {
        let table: HashMap<MapData, FragKey, FragValue> = pinned(&t.pins, maps::FRAGS)?;
        Ok(table.keys().count())
    };
    let deadline = Instant::now() + WAIT;
    while recorded()? == 0 {
        assert!(
            Instant::now() < deadline,
            "the first fragment was never recorded"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    upgrade_abi(&mut daemon, &t, &lab)?;
    let followed = || counted(&t, maps::TC_STATS, "allow_fragment");
    let before = followed()?;
    send(&last)?;
    let mut got = [0u8; 64];
    let n = receiver
        .recv(&mut got)
        .context("the datagram whose first fragment passed the older ABI never arrived")?;
    assert_eq!(&got[..n], PAYLOAD);
    assert!(
        followed()? > before,
        "the last fragment followed its first through the carried table"
    );
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// The upgrade: the running daemon stopped, its ABI's pins presented as
/// the previous one's, and a daemon started on them and in force, which
/// retired them.
fn upgrade_abi(daemon: &mut Enforcer, t: &TempPins, lab: &BridgeLab) -> anyhow::Result<()> {
    daemon.stop();
    let older = palisade::paths::PinDir::with_abi(t.pins.base(), t.pins.abi() - 1);
    fs::rename(t.pins.root(), older.root())?;
    daemon.restart(&palisade_bin()?, &lab.node)?;
    commit_and_wait(daemon)?;
    assert!(!older.root().exists(), "the older ABI's pins were retired");
    Ok(())
}

/// The two fragments of a UDP datagram carrying `payload` (16 bytes): the
/// first holds the UDP header and 8 bytes, the last (16 bytes in: 2 units
/// of 8) the other 8.
fn fragments(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    sport: u16,
    dport: u16,
    payload: &[u8; 16],
) -> (Vec<u8>, Vec<u8>) {
    use palisade_tests::packet::{UDP, ipv4, udp};
    let mut head = udp(sport, dport);
    head[4..6].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    head.extend_from_slice(&payload[..8]);
    let (src, dst) = (src.octets(), dst.octets());
    (
        ipv4(src, dst, UDP, (id, 0, true), &head),
        ipv4(src, dst, UDP, (id, 2, false), &payload[8..]),
    )
}

/// Sends an IPv4 packet whose header is `packet`'s own (the kernel fills
/// only its checksum).
fn send_raw(dst: Ipv4Addr, packet: &[u8]) -> anyhow::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("raw socket")?;
    socket.send_to(packet, &SockAddr::from(std::net::SocketAddrV4::new(dst, 0)))?;
    Ok(())
}

/// The status once the daemon has made `n` more passes.
fn passes_after(daemon: &Enforcer, n: u64) -> anyhow::Result<serde_json::Value> {
    let count = |s: &serde_json::Value| s["passes"].as_u64().context("passes in the status");
    let from = count(&daemon.status()?)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = daemon.status()?;
        if count(&s)? >= from + n {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("no {n} passes within 20 s: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The packets the pinned per-reason totals `stats` (`TC_STATS`,
/// `XDP_STATS`) count under `reason`, on every CPU.
fn counted(t: &TempPins, stats: &str, reason: &str) -> anyhow::Result<u64> {
    Ok(palisade::observe::stats::read_pinned(&t.pins.map(stats))?
        .iter()
        .filter(|r| r.reason == reason)
        .map(|r| r.events)
        .sum())
}

/// Connects from `src` (an address of the calling namespace) to `to`;
/// [`answered`] says what the outcome means.
fn connect_from(src: impl Into<IpAddr>, to: SocketAddr) -> anyhow::Result<bool> {
    let src = src.into();
    let attempt = || -> std::io::Result<()> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM,
            None,
        )?;
        s.bind(&SocketAddr::from((src, 0)).into())?;
        s.connect_timeout(&to.into(), WAIT)
    };
    answered(attempt(), &format!("{src} -> {to}"))
}

const DENY_EXT1: &str = "apiVersion: palisade.dev/v1alpha1\nkind: PalisadeClusterNetworkPolicy\nmetadata: {name: no-ext1-on-8080}\nspec:\n  tier: Admin\n  subject: {podSelector: {matchLabels: {pod: a}}}\n  ingress: [{action: Deny, from: [{ipBlock: {cidr: 192.0.2.2/32}}], ports: [{port: 8080}]}]\n";

#[test]
fn the_prefilter_on_an_uplink_drops_denied_sources_and_refused_connection_attempts()
-> anyhow::Result<()> {
    use ebpf_common::maps::{TC_STATS, XDP_STATS};

    let t = TempPins::new()?;
    // Outside the node: a host with two addresses behind the uplink, which
    // is the node's default route (`--uplink auto` finds it).
    let (ext1, ext2) = (Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3));
    let lab = BridgeLab::with_externals(1, &[IpAddr::V4(ext1), IpAddr::V4(ext2)])?;
    lab.route_default_via_uplink()?;
    let outside = lab.outside.as_ref().context("no outside namespace")?;
    let pod = &lab.pods[0];
    let listeners: Vec<TcpListener> = [PORT, PORT + 1]
        .iter()
        .map(|&port| in_netns(&pod.netns, || TcpListener::bind((pod.ip, port))))
        .collect::<Result<Result<_, _>, _>>()??;

    let dir = std::env::temp_dir().join(unique("palisade-prefilter-"));
    let extra = ["--uplink", "auto", "--deny-cidr", "192.0.2.3/32"];
    let mut daemon = start(&lab, &t, &dir, 300, &extra)?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    daemon.write("policy.yaml", DENY_EXT1)?;
    commit_and_wait(&mut daemon)?;

    let to = |port| SocketAddr::from((pod.ip, port));
    let xdp = |reason: &str| counted(&t, XDP_STATS, reason);
    let tc_denied = || counted(&t, TC_STATS, "drop_policy_deny");
    let reach = |src, port| in_netns(outside, || connect_from(src, to(port)))?;
    assert!(reach(ext1, PORT + 1)?, "ext1 -> :8081, not denied");
    assert!(!reach(ext1, PORT)?, "ext1 -> :8080, denied");
    assert!(
        xdp("drop_xdp_pod_deny")? >= 1,
        "the SYN was dropped on the uplink"
    );
    assert_eq!(tc_denied()?, 0, "none reached the pod's own program");
    assert!(!reach(ext2, PORT + 1)?, "ext2 is on the node's deny list");
    assert!(xdp("drop_cidr_deny")? >= 1, "dropped by the deny list");

    // The deny goes: so does the prefilter's copy of it.
    daemon.remove("policy.yaml")?;
    commit_and_wait(&mut daemon)?;
    assert!(reach(ext1, PORT)?, "ext1 -> :8080 once the deny is gone");
    drop(listeners);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// `--uplink auto` follows the default routes: when the node's default
/// route moves to another interface, the prefilter moves with it, without
/// a restart.
#[test]
fn the_prefilter_follows_the_default_route() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::with_externals(1, &[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))])?;
    lab.route_default_via_uplink()?;
    let dir = std::env::temp_dir().join(unique("palisade-uplinks-"));
    let extra = ["--uplink", "auto", "--deny-cidr", "192.0.2.3/32"];
    let mut daemon = start(&lab, &t, &dir, 300, &extra)?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    commit_and_wait(&mut daemon)?;
    let ifindex = |name: &'static str| in_netns(&lab.node, || palisade::netns::ifindex(name));
    let first = ifindex("uplink0")??;
    let on = |i: u32| t.pins.link(&format!("xdp-{i}")).exists();
    assert!(
        on(first),
        "the prefilter is on the default route's interface"
    );

    // The namespace's descriptor is close-on-exec: name it through this
    // process for `nsenter`.
    let node = format!("/proc/{}/fd/{}", std::process::id(), lab.node.fd());
    let ip = |args: &str| -> anyhow::Result<()> {
        let status = std::process::Command::new("nsenter")
            .arg(format!("--net={node}"))
            .arg("ip")
            .args(args.split(' '))
            .status()?;
        anyhow::ensure!(status.success(), "ip {args}: {status}");
        Ok(())
    };
    ip("link add uplink1 type veth peer name uplink1p")?;
    ip("link set uplink1p up")?;
    ip("link set uplink1 up")?;
    ip("route replace default dev uplink1")?;
    let second = ifindex("uplink1")??;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(on(second) && !on(first)) {
        if Instant::now() > deadline {
            bail!(
                "the prefilter did not move to uplink1 (on uplink0: {}, on uplink1: {}): {:?}",
                on(first),
                on(second),
                daemon.status().ok()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = daemon.status()?;
    assert!(s["errors"].as_array().is_some_and(Vec::is_empty), "{s}");
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// One HTTP GET from the calling namespace; the response's status code
/// (`None`: no connection).
fn status_of(to: SocketAddr, path: &str) -> anyhow::Result<Option<u16>> {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = TcpStream::connect_timeout(&to, WAIT) else {
        return Ok(None);
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let line = String::from_utf8_lossy(&head);
    Ok(line.get(9..12).and_then(|c| c.parse().ok()))
}

/// With hostNetwork whatever the daemon listens on is reachable from every
/// pod of the node: there the metrics endpoint serves metrics and health
/// only, and the event stream and `explain` (other pods' traffic, the
/// policies) are served on loopback, which no pod reaches.
#[test]
fn events_and_explain_are_not_served_where_pods_reach() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(1)?;
    let dir = std::env::temp_dir().join(unique("palisade-endpoints-"));
    fs::create_dir_all(dir.join("source"))?;
    fs::write(dir.join("source/cluster.yaml"), cluster(&lab))?;
    fs::write(dir.join("source/.revision"), "1")?;
    let log = fs::File::create(dir.join("daemon.log"))?;
    let mut cmd = std::process::Command::new(palisade_bin()?);
    cmd.arg("--pin-base")
        .arg(t.pins.base())
        .args(["daemon", "--resync-ms", "300", "--source"])
        .arg(dir.join("source"))
        .arg("--status-file")
        .arg(dir.join("status.json"))
        .args(["--metrics-addr", "0.0.0.0:0", "--api-addr", "127.0.0.1:0"])
        .stdout(log.try_clone()?)
        .stderr(log);
    lab.node.spawn_inside(&mut cmd)?;
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = Killed(cmd.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(text) = fs::read_to_string(dir.join("status.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && v["revision"] == "1"
            && v["ready"] == true
        {
            break v;
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon did not get ready: {}",
                fs::read_to_string(dir.join("daemon.log"))?
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let port = |field: &str| -> anyhow::Result<u16> {
        let addr: SocketAddr = status[field].as_str().context("no address")?.parse()?;
        Ok(addr.port())
    };
    // The node's address on the bridge, the pods' gateway.
    let node_ip = Ipv4Addr::new(10, 199, 1, 254);
    let metrics = SocketAddr::from((node_ip, port("metrics")?));
    let api = SocketAddr::from((node_ip, port("api")?));
    let pod = &lab.pods[0].netns;
    let from_pod = |to, path: &'static str| in_netns(pod, move || status_of(to, path))?;
    assert_eq!(
        from_pod(metrics, "/metrics")?,
        Some(200),
        "metrics are scraped from outside"
    );
    assert_eq!(from_pod(metrics, "/readyz")?, Some(200));
    assert_eq!(
        from_pod(metrics, "/events")?,
        Some(403),
        "no event stream where pods reach"
    );
    assert_eq!(
        from_pod(metrics, "/explain?from=x/a&to=x/a&port=80")?,
        Some(403),
        "no explain where pods reach"
    );
    assert_eq!(
        from_pod(api, "/events")?,
        None,
        "the loopback endpoint is out of pods' reach"
    );
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, port("api")?));
    let on_node = in_netns(&lab.node, move || {
        status_of(local, "/explain?from=x/a&to=x/a&port=80")
    })??;
    assert_eq!(on_node, Some(200), "on the node itself explain answers");
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

const PROCESS_RULES: &str = "apiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {name: no-shells, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: []\n  process:\n    posture: Allowlist\n    rules: [{action: Allow, paths: [/usr/bin/app]}]\n";

/// An accepted `process:` section that this node does not enforce is said
/// to be not enforced, with the reason, in the status, the log and the
/// metrics: never silently accepted. Here BPF LSM cannot run (the kernel
/// refuses LSM programs), and the lab's pods carry no cgroup either.
#[test]
fn process_rules_this_node_cannot_enforce_are_reported_not_enforced() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(1)?;
    let dir = std::env::temp_dir().join(unique("palisade-daemon-"));
    let mut daemon = start(&lab, &t, &dir, 300, &[])?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    daemon.write("policy.yaml", PROCESS_RULES)?;
    let s = commit_and_wait(&mut daemon)?;
    let reasons: Vec<&str> = s["policies_not_enforced"]["palisade:x/no-shells"]
        .as_array()
        .with_context(|| format!("the policy is not listed as not enforced: {s}"))?
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    let lsm = s["lsm"].as_str().context("no lsm state in the status")?;
    if lsm.starts_with("inactive") {
        assert!(
            reasons.iter().any(|r| r.contains("BPF LSM is inactive")),
            "{reasons:?}"
        );
    }
    assert!(
        reasons.iter().any(|r| r.contains("cgroup is not known")),
        "{reasons:?}"
    );
    assert_ne!(s["lsm_pods"]["x/a"].as_str(), Some("in force"), "{s}");
    let metrics = daemon.scrape(&lab.node)?;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("palisade_policy_not_enforced{policy=\"palisade:x/no-shells\"}")
            && l.ends_with(" 1")),
        "no gauge for the policy:\n{metrics}"
    );
    // `palisade explain` says what the rules decide, and that this node
    // does not enforce them.
    let explained = lab
        .node
        .http_get(daemon.metrics_addr()?, "/explain?pod=x/a&exec=/bin/sh")?;
    assert!(
        explained.contains("BLOCKED")
            && explained.contains("posture: Allowlist of palisade:x/no-shells"),
        "{explained}"
    );
    if lsm.starts_with("inactive") {
        assert!(explained.contains("BPF LSM is inactive"), "{explained}");
    }
    assert!(explained.contains("knows no cgroup of x/a"), "{explained}");
    let log = fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    assert!(
        log.contains("not enforced") && log.contains("no-shells"),
        "{}",
        daemon.log_tail()
    );
    // Removing the policy clears the report and the gauge.
    daemon.remove("policy.yaml")?;
    let s = commit_and_wait(&mut daemon)?;
    assert_eq!(
        s["policies_not_enforced"].as_object().map(|o| o.len()),
        Some(0),
        "{s}"
    );
    let metrics = daemon.scrape(&lab.node)?;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("palisade_policy_not_enforced{policy=\"palisade:x/no-shells\"}")
            && l.ends_with(" 0")),
        "the gauge stayed up:\n{metrics}"
    );
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// A pod's connection from an address its Pod does not list is dropped as
/// spoofed (`drop_spoofed_source`, counted), in its own family and in the
/// one its Pod lists no address in, until the Pod lists a prefix that
/// covers the address (`palisade.dev/source-prefixes`) or opts out of the
/// source check (`palisade.dev/source-check: "off"`), each listed in the
/// status, on a daemon that honours that (`--allow-source-check-opt-out`);
/// with the file source and with the Kubernetes source, which reads the
/// annotations from the local pod's own object. A prefix that no longer
/// covers the address blocks it again. A daemon without the flag, or a
/// value that does not read, keeps the check on, with an error. A Pod that
/// lists the address as its own second one (a file can) may send from it,
/// whatever the flag.
#[test]
fn a_pod_sends_from_an_address_not_its_own_only_where_it_opts_out() -> anyhow::Result<()> {
    use ebpf_common::maps::TC_STATS;
    use palisade_lab::enforcer::Feed;

    for (feed, honoured) in [
        (Feed::Files, true),
        (Feed::Kube, true),
        (Feed::Files, false),
    ] {
        let t = TempPins::new()?;
        let lab = BridgeLab::new(2)?;
        let _listeners = listen_in_every_pod(&lab)?;
        // a's second and third addresses: its own to the kernel, not its
        // Pod's.
        let other = Ipv4Addr::new(10, 199, 1, 200);
        let third = Ipv4Addr::new(10, 199, 1, 201);
        for addr in [other, third] {
            ip_in(&lab.pods[0].netns, &format!("addr add {addr}/32 dev eth0"))?;
        }
        // And IPv6 addresses that neither Pod lists: each is single-stack.
        let (a6, b6) = ("fd00:199::a", "fd00:199::b");
        for (pod, addr) in lab.pods.iter().zip([a6, b6]) {
            ip_in(&pod.netns, &format!("-6 addr add {addr}/64 dev eth0 nodad"))?;
        }
        // a's neighbour solicitation from its unlisted address would be
        // dropped as spoofed too, before its SYN left: a holds b's entry.
        let mac_b = mac_text(mac_of(&lab.pods[1])?);
        ip_in(
            &lab.pods[0].netns,
            &format!("-6 neigh replace {b6} lladdr {mac_b} dev eth0 nud permanent"),
        )?;
        let b6: std::net::Ipv6Addr = b6.parse()?;
        let _listener6 = in_netns(&lab.pods[1].netns, || TcpListener::bind((b6, PORT)))??;
        let dir = std::env::temp_dir().join(unique("palisade-sources-"));
        let args = DaemonArgs {
            resync_ms: 500,
            feed,
            extra: if honoured {
                vec!["--allow-source-check-opt-out".into()]
            } else {
                Vec::new()
            },
        };
        let mut daemon =
            Enforcer::start_with(&palisade_bin()?, &lab.node, &dir, t.pins.base(), args)?;
        let run = format!("{feed:?}, opt-out honoured: {honoured}");
        let spoofed = || counted(&t, TC_STATS, "drop_spoofed_source");
        let to_b = SocketAddr::from((lab.pods[1].ip, PORT));
        let from = |src| in_netns(&lab.pods[0].netns, || connect_from(src, to_b))?;
        let checked = || -> anyhow::Result<()> {
            let before = spoofed()?;
            assert!(!from(other)?, "{run}: a is blocked from another address");
            assert!(
                spoofed()? > before,
                "{run}: ... because Palisade dropped it as spoofed"
            );
            Ok(())
        };
        let annotated_with = |key: &str, value: &str| {
            cluster(&lab).replacen(
                "labels: {pod: a}}",
                &format!("labels: {{pod: a}}, annotations: {{{key}: '{value}'}}}}"),
                1,
            )
        };
        let annotated = |check: &str| annotated_with("palisade.dev/source-check", check);
        let prefixes = |list: &str| annotated_with("palisade.dev/source-prefixes", list);

        daemon.write("cluster.yaml", &cluster(&lab))?;
        let s = commit_and_wait(&mut daemon)?;
        assert!(s.get("sources_unchecked").is_none(), "{run}: {s}");
        assert!(
            from(lab.pods[0].ip)?,
            "{run}: a reaches b from its own address"
        );
        checked()?;
        let to_b6 = SocketAddr::from((b6, PORT));
        let a6: std::net::Ipv6Addr = a6.parse()?;
        let blocked_v6 = || -> anyhow::Result<()> {
            let before = spoofed()?;
            assert!(
                !in_netns(&lab.pods[0].netns, || connect_from(a6, to_b6))??,
                "{run}: a, listed with an IPv4 address only, is blocked from an IPv6 one"
            );
            assert!(
                spoofed()? > before,
                "{run}: ... because Palisade dropped it as spoofed"
            );
            Ok(())
        };
        blocked_v6()?;

        // A Pod listing both of a's IPv4 addresses (a file can; a
        // Kubernetes Pod's `status.podIPs` holds one per family): the
        // second is a's own, whatever the flag.
        if feed == Feed::Files {
            let own_ip = format!("status: {{podIP: {}}}", lab.pods[0].ip);
            let both = cluster(&lab).replacen(
                &own_ip,
                &format!(
                    "status: {{podIP: {0}, podIPs: [{{ip: {0}}}, {{ip: {other}}}]}}",
                    lab.pods[0].ip
                ),
                1,
            );
            assert_ne!(both, cluster(&lab));
            daemon.write("cluster.yaml", &both)?;
            let s = commit_and_wait(&mut daemon)?;
            assert!(s.get("sources_unchecked").is_none(), "{run}: {s}");
            assert!(s.get("source_prefixes").is_none(), "{run}: {s}");
            assert!(
                from(other)?,
                "{run}: a reaches b from the second address its Pod lists"
            );
            assert!(from(lab.pods[0].ip)?, "{run}: and from its first");
            let before = spoofed()?;
            assert!(
                !from(third)?,
                "{run}: a is still blocked from an address its Pod does not list"
            );
            assert!(spoofed()? > before, "{run}: ... as spoofed");
            assert!(
                s["errors"].as_array().is_some_and(Vec::is_empty),
                "{run}: {s}"
            );
            blocked_v6()?;
            daemon.write("cluster.yaml", &cluster(&lab))?;
            commit_and_wait(&mut daemon)?;
            checked()?;
        }
        // The pod's annotation is refused, with an error, and it stays checked.
        let refused = |s: &serde_json::Value, why: &str| -> anyhow::Result<()> {
            let error = s["errors"][0].as_str().unwrap_or_default();
            assert!(
                error.contains("Pod x/a") && error.contains(why),
                "{run}: {s}"
            );
            checked()
        };

        // Extra prefixes: the other address's, then one that misses it.
        daemon.write(
            "cluster.yaml",
            &prefixes(&format!("{other}/32, fd00:9::/64")),
        )?;
        let s = commit_and_wait(&mut daemon)?;
        if honoured {
            assert_eq!(
                s["source_prefixes"]["x/a"],
                serde_json::json!([format!("{other}/32"), "fd00:9::/64"]),
                "{run}: {s}"
            );
            assert!(s.get("sources_unchecked").is_none(), "{run}: {s}");
            assert!(
                from(other)?,
                "{run}: a reaches b from a prefix its Pod lists"
            );
            blocked_v6()?;
            daemon.write("cluster.yaml", &prefixes("10.199.2.0/24"))?;
            let s = commit_and_wait(&mut daemon)?;
            assert_eq!(
                s["source_prefixes"]["x/a"],
                serde_json::json!(["10.199.2.0/24"]),
                "{run}: {s}"
            );
            checked()?;
            // A value that does not read: refused, and checked again.
            daemon.write("cluster.yaml", &prefixes(&format!("{other}/32, 10.199.1")))?;
            let s = commit_and_wait(&mut daemon)?;
            assert!(s.get("source_prefixes").is_none(), "{run}: {s}");
            refused(&s, "source-prefixes: \"10.199.1\" is not a prefix")?;
        } else {
            assert!(s.get("source_prefixes").is_none(), "{run}: {s}");
            refused(&s, "source-prefixes is not honoured")?;
        }

        daemon.write("cluster.yaml", &annotated("off"))?;
        let s = commit_and_wait(&mut daemon)?;
        if honoured {
            assert_eq!(
                s["sources_unchecked"]["x/a"], "opted out (palisade.dev/source-check: \"off\")",
                "{run}: {s}"
            );
            assert!(
                from(other)?,
                "{run}: opted out, a reaches b from another address"
            );
        } else {
            assert!(s.get("sources_unchecked").is_none(), "{run}: {s}");
            refused(&s, "source-check: \"off\" is not honoured")?;
            daemon.stop();
            let _ = fs::remove_dir_all(&dir);
            continue;
        }

        daemon.write("cluster.yaml", &annotated("of"))?;
        let s = commit_and_wait(&mut daemon)?;
        assert!(s.get("sources_unchecked").is_none(), "{run}: {s}");
        refused(&s, "\"of\" is neither")?;

        daemon.stop();
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// The output of `ip <args>` in `ns`.
fn ip_output(ns: &palisade_lab::netns::Netns, args: &str) -> anyhow::Result<String> {
    let out = in_netns(ns, || {
        std::process::Command::new("ip")
            .args(args.split(' '))
            .output()
    })??;
    anyhow::ensure!(out.status.success(), "ip {args}: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The word after `key` in what `ip args` prints in `ns` (an address
/// after `inet`, a MAC after `link/ether`).
fn ip_word_after(ns: &palisade_lab::netns::Netns, args: &str, key: &str) -> anyhow::Result<String> {
    let out = ip_output(ns, args)?;
    let word = out.split_whitespace().skip_while(|w| *w != key).nth(1);
    Ok(word
        .with_context(|| format!("no {key} in ip {args}"))?
        .to_owned())
}

/// The MAC address of `eth0` in a pod.
fn mac_of(pod: &palisade_lab::fixtures::LabPod) -> anyhow::Result<[u8; 6]> {
    let text = ip_word_after(&pod.netns, "-o link show dev eth0", "link/ether")?;
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16)?;
    }
    Ok(mac)
}

/// The link-layer address `ns` holds for `ip`, if any.
fn neighbour_mac(
    ns: &palisade_lab::netns::Netns,
    ip: impl Into<IpAddr>,
) -> anyhow::Result<Option<String>> {
    let out = ip_output(ns, &format!("neigh show {}", ip.into()))?;
    Ok(out
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_owned))
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Sends a whole Ethernet frame out of `eth0` of the calling namespace.
fn send_frame(frame: &[u8]) -> anyhow::Result<()> {
    // SAFETY: plain system calls on a descriptor owned here; `addr` is a
    // fully initialised `sockaddr_ll` whose size is passed with it.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        anyhow::ensure!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = i32::try_from(palisade::netns::ifindex("eth0")?)?;
        addr.sll_halen = 6;
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        anyhow::ensure!(sent == frame.len() as isize, "send: {error}");
    }
    Ok(())
}

/// A gratuitous ARP reply, broadcast from `from`: `ip` is at `mac`. Its
/// target is its sender, hardware address too, which makes a Linux
/// receiver replace an entry it learnt less than a lock time (1 s) ago.
fn garp(from: [u8; 6], mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&from);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&palisade_tests::packet::arp(
        2,
        (mac, ip.octets()),
        (mac, ip.octets()),
    ));
    frame
}

/// A router advertisement (lifetime 1800 s) to all nodes, from `dev` of
/// the calling namespace (its link-local address, hop limit 255).
fn send_router_advert(dev: &str) -> anyhow::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    let ifindex = palisade::netns::ifindex(dev)?;
    socket.set_multicast_if_v6(ifindex)?;
    socket.set_multicast_hops_v6(255)?;
    // Type, code, checksum (the kernel's), hop limit, flags, lifetime,
    // reachable time, retransmit timer.
    let mut ra = vec![134, 0, 0, 0, 64, 0];
    ra.extend_from_slice(&1800u16.to_be_bytes());
    ra.extend_from_slice(&[0; 8]);
    let all_nodes = std::net::SocketAddrV6::new("ff02::1".parse()?, 0, 0, ifindex);
    socket.send_to(&ra, &SockAddr::from(all_nodes))?;
    Ok(())
}

/// An unsolicited neighbour advertisement to all nodes from `eth0` of the
/// calling namespace: `target` is at `mac`, override flag set, as a router.
fn send_neighbour_advert(target: Ipv6Addr, mac: [u8; 6]) -> anyhow::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    let ifindex = palisade::netns::ifindex("eth0")?;
    socket.set_multicast_if_v6(ifindex)?;
    socket.set_multicast_hops_v6(255)?;
    // Type, code, checksum (the kernel's), flags (router, override),
    // reserved, the target, then its link-layer address option.
    let mut na = vec![136, 0, 0, 0, 0xa0, 0, 0, 0];
    na.extend_from_slice(&target.octets());
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&mac);
    let all_nodes = std::net::SocketAddrV6::new("ff02::1".parse()?, 0, 0, ifindex);
    socket.send_to(&na, &SockAddr::from(all_nodes))?;
    Ok(())
}

/// The bridge port `ns`'s br0 forwards `mac` to, as its forwarding
/// database says.
fn fdb_port(ns: &palisade_lab::netns::Netns, mac: [u8; 6]) -> anyhow::Result<Option<String>> {
    let out = in_netns(ns, || {
        std::process::Command::new("bridge")
            .args(["fdb", "show", "br", "br0"])
            .output()
    })??;
    anyhow::ensure!(out.status.success(), "bridge fdb show: {}", out.status);
    let mac = mac_text(mac);
    Ok(String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        (words.first() == Some(&mac.as_str()))
            .then(|| words.iter().skip_while(|w| **w != "dev").nth(1))
            .flatten()
            .map(|d| (*d).to_owned())
    }))
}

/// A frame of a local experimental ethertype, broadcast from `mac`.
fn frame_from(mac: [u8; 6]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&0x88b5u16.to_be_bytes());
    frame.extend_from_slice(&[0; 46]);
    frame
}

/// The link-local address of `dev` in `ns`.
fn link_local_of(ns: &palisade_lab::netns::Netns, dev: &str) -> anyhow::Result<Ipv6Addr> {
    let text = ip_word_after(
        ns,
        &format!("-6 -o addr show dev {dev} scope link"),
        "inet6",
    )?;
    Ok(text.split('/').next().unwrap_or_default().parse()?)
}

/// The IPv6 default routes a namespace holds.
fn default_routes6(ns: &palisade_lab::netns::Netns) -> anyhow::Result<String> {
    Ok(ip_output(ns, "-6 route show default")?.trim().to_owned())
}

/// A pod cannot teach the node or its neighbours that another pod's address
/// is at its MAC (a gratuitous ARP announcing b's address from a: dropped
/// as spoofed, and the node and c keep b's MAC), nor make itself their
/// router (a router advertisement from a: dropped, and c learns no default
/// route), nor announce the router's link-local address (br0's) at its MAC
/// (dropped, and c keeps br0's MAC for it), nor send frames from b's MAC
/// (dropped, and the bridge keeps b's MAC at b's port), nor announce its
/// own address at b's MAC (dropped, and the node keeps a's MAC for it).
/// The controls show that the same messages work where they are
/// the sender's own: b announcing its own address moves the node's entry,
/// and the node's router advertisement gives c a default route.
#[test]
fn a_pod_cannot_announce_a_neighbours_address_or_itself_as_router() -> anyhow::Result<()> {
    use ebpf_common::maps::TC_STATS;
    let t = TempPins::new()?;
    let lab = BridgeLab::new(3)?;
    let _listeners = listen_in_every_pod(&lab)?;
    let dir = std::env::temp_dir().join(unique("palisade-neighbours-"));
    let mut daemon = start(&lab, &t, &dir, 300, &[])?;
    daemon.write("cluster.yaml", &cluster(&lab))?;
    commit_and_wait(&mut daemon)?;
    let (a, b, c) = (&lab.pods[0], &lab.pods[1], &lab.pods[2]);
    let (mac_a, mac_b) = (mac_of(a)?, mac_of(b)?);
    // The node and c learn b's MAC, and hold it past the kernel's lock
    // time (1 s), within which an entry is not replaced by a non-gratuitous
    // message.
    assert!(reaches(&lab, 2, 1)?, "c reaches b");
    let to_b = SocketAddr::from((b.ip, PORT));
    assert!(
        in_netns(&lab.node, || TcpStream::connect_timeout(&to_b, WAIT))?.is_ok(),
        "the node reaches b"
    );
    std::thread::sleep(Duration::from_millis(1200));
    let holds = |ns, mac: [u8; 6]| -> anyhow::Result<bool> {
        Ok(neighbour_mac(ns, b.ip)?.as_deref() == Some(mac_text(mac).as_str()))
    };
    assert!(
        holds(&lab.node, mac_b)? && holds(&c.netns, mac_b)?,
        "b's MAC learnt"
    );

    let spoofed_before = counted(&t, TC_STATS, "drop_spoofed_source")?;
    for _ in 0..3 {
        in_netns(&a.netns, || send_frame(&garp(mac_a, mac_a, b.ip)))??;
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(holds(&lab.node, mac_b)?, "the node still has b at b's MAC");
    assert!(holds(&c.netns, mac_b)?, "c still has b at b's MAC");
    assert!(
        counted(&t, TC_STATS, "drop_spoofed_source")? >= spoofed_before + 3,
        "... because Palisade dropped a's announcements as spoofed"
    );
    assert!(reaches(&lab, 2, 1)?, "c still reaches b");

    // The control: with the node's entry for b moved elsewhere by hand,
    // b's own announcement (from and of its own MAC) moves it back.
    let elsewhere = [2, 0, 0, 0, 0, 0x99];
    ip_output(
        &lab.node,
        &format!(
            "neigh replace {} lladdr {} dev br0 nud stale",
            b.ip,
            mac_text(elsewhere)
        ),
    )?;
    assert!(
        holds(&lab.node, elsewhere)?,
        "the node's entry moved by hand"
    );
    in_netns(&b.netns, || send_frame(&garp(mac_b, mac_b, b.ip)))??;
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        holds(&lab.node, mac_b)?,
        "b's own announcement moves the node's entry back"
    );

    // A router advertisement from a reaches no one; the node's reaches c.
    let routers_before = counted(&t, TC_STATS, "drop_router_message")?;
    in_netns(&a.netns, || send_router_advert("eth0"))??;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(default_routes6(&c.netns)?, "", "c learnt no router from a");
    assert!(
        counted(&t, TC_STATS, "drop_router_message")? > routers_before,
        "... because Palisade dropped a's advertisement"
    );
    in_netns(&lab.node, || send_router_advert("br0"))??;
    let deadline = Instant::now() + Duration::from_secs(3);
    while default_routes6(&c.netns)?.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !default_routes6(&c.netns)?.is_empty(),
        "the control: c takes the node's advertisement"
    );

    // Nor can a announce the router's own link-local address (br0's) at
    // its MAC, which would take c's routed traffic: c resolves it, then
    // a's advertisement of it, overriding, is dropped as spoofed.
    let router = link_local_of(&lab.node, "br0")?;
    let mac_br0 = ip_word_after(&lab.node, "-o link show dev br0", "link/ether")?;
    let to_router = std::net::SocketAddrV6::new(router, 9, 0, 0);
    in_netns(&c.netns, || -> anyhow::Result<()> {
        let ifindex = palisade::netns::ifindex("eth0")?;
        let to = std::net::SocketAddrV6::new(*to_router.ip(), 9, 0, ifindex);
        std::net::UdpSocket::bind("[::]:0")?.send_to(b"x", to)?;
        Ok(())
    })??;
    let deadline = Instant::now() + Duration::from_secs(3);
    while neighbour_mac(&c.netns, router)?.as_deref() != Some(mac_br0.as_str())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        neighbour_mac(&c.netns, router)?.as_deref(),
        Some(mac_br0.as_str()),
        "c resolved the router's link-local address"
    );
    let spoofed_before = counted(&t, TC_STATS, "drop_spoofed_source")?;
    for _ in 0..3 {
        in_netns(&a.netns, || send_neighbour_advert(router, mac_a))??;
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        neighbour_mac(&c.netns, router)?.as_deref(),
        Some(mac_br0.as_str()),
        "c still has the router at br0's MAC"
    );
    assert!(
        counted(&t, TC_STATS, "drop_spoofed_source")? >= spoofed_before + 3,
        "... because Palisade dropped a's advertisements as spoofed"
    );
    // The daemon found both of br0's addresses, its IPv4 one (the pods'
    // gateway) IPv4-mapped, as the node's, which no pod may claim.
    let held = palisade::datapath::DatapathMaps::open(&t.pins)?.node_addresses()?;
    let gateway: Ipv4Addr = ip_word_after(&lab.node, "-4 -o addr show dev br0", "inet")?
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()?;
    assert!(
        held.contains(&router) && held.contains(&gateway.to_ipv6_mapped()),
        "the node's addresses: {held:?}"
    );

    // Nor can a send frames from b's MAC, which would teach the bridge
    // that b lives behind a's port; b's own frames keep it at b's.
    assert!(reaches(&lab, 2, 1)?, "c reaches b");
    assert_eq!(
        fdb_port(&lab.node, mac_b)?.as_deref(),
        Some(b.host_if.as_str())
    );
    let macs_before = counted(&t, TC_STATS, "drop_spoofed_mac")?;
    for _ in 0..3 {
        in_netns(&a.netns, || send_frame(&frame_from(mac_b)))??;
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        fdb_port(&lab.node, mac_b)?.as_deref(),
        Some(b.host_if.as_str()),
        "the bridge still has b's MAC behind b's port"
    );
    assert!(
        counted(&t, TC_STATS, "drop_spoofed_mac")? >= macs_before + 3,
        "... because Palisade dropped a's frames from b's MAC"
    );
    in_netns(&a.netns, || send_frame(&frame_from(mac_a)))??;
    assert!(reaches(&lab, 2, 1)?, "c still reaches b");
    assert!(reaches(&lab, 2, 0)?, "and a, whose own frames pass");

    // Nor can a, from its own MAC, announce its own address at b's: the
    // node would send a's traffic to b's port, and its next full pass
    // would place a's endpoint on b's veth, where placement finds that MAC.
    let to_a = SocketAddr::from((a.ip, PORT));
    assert!(
        in_netns(&lab.node, || TcpStream::connect_timeout(&to_a, WAIT))?.is_ok(),
        "the node reaches a"
    );
    let has_a_at = |mac: [u8; 6]| -> anyhow::Result<bool> {
        Ok(neighbour_mac(&lab.node, a.ip)?.as_deref() == Some(mac_text(mac).as_str()))
    };
    assert!(has_a_at(mac_a)?, "the node has a at a's MAC");
    let macs_before = counted(&t, TC_STATS, "drop_spoofed_mac")?;
    for _ in 0..3 {
        in_netns(&a.netns, || send_frame(&garp(mac_a, mac_b, a.ip)))??;
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(has_a_at(mac_a)?, "the node still has a at a's MAC");
    assert!(
        counted(&t, TC_STATS, "drop_spoofed_mac")? >= macs_before + 3,
        "... because Palisade dropped a's announcements of b's MAC"
    );
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}
