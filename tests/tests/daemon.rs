//! The daemon as it runs on a node, as a separate process in the node's
//! namespace with the file source: it finds the pods' veths on the bridge,
//! attaches, enforces the policies of the directory, reports each revision
//! when it is in force, repairs an entry deleted behind its back, and leaves
//! enforcement in place when it stops.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade::{datapath::DatapathMaps, sync::endpoint_ids};
use palisade_tests::{BridgeLab, TempPins, in_netns, palisade_bin, unique};

const WAIT: Duration = Duration::from_millis(700);
const PORT: u16 = 8080;

struct Daemon(Child);

impl Daemon {
    fn start(
        node: &str,
        pins: &Path,
        source: &Path,
        status: &Path,
        resync_ms: u32,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let ns = fs::File::open(Path::new("/run/netns").join(node))?;
        let mut cmd = Command::new(palisade_bin()?);
        cmd.arg("--pin-base")
            .arg(pins)
            .args(["daemon", "--resync-ms", &resync_ms.to_string(), "--source"])
            .arg(source)
            .arg("--status-file")
            .arg(status)
            .args(extra);
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; only the child's netns changes
        // (not its mounts, so bpffs stays visible).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Self(cmd.spawn()?))
    }

    fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(status: &Path, revision: &str) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(text) = fs::read_to_string(status) {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            if v["revision"] == revision && v["ready"] == true {
                return Ok(v);
            }
            last = text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("revision {revision} not in force: {last}")
}

fn write_revision(dir: &Path, file: &str, text: &str, revision: &str) -> anyhow::Result<()> {
    fs::write(dir.join(file), text)?;
    fs::write(dir.join(".revision"), revision)?;
    Ok(())
}

fn cluster(lab: &BridgeLab) -> String {
    let mut text =
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n".to_owned();
    for (i, pod) in lab.pods.iter().enumerate() {
        let name = ["a", "b", "c"][i];
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{pod: {name}}}}}\nstatus: {{podIP: {}}}\n",
            pod.ip
        ));
    }
    text
}

const B_FROM_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-from-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 8080}]}]\n";

fn reaches(lab: &BridgeLab, from: usize, to: usize) -> anyhow::Result<bool> {
    let target = SocketAddr::from((lab.pods[to].ip, PORT));
    Ok(in_netns(&lab.pods[from].netns, || {
        TcpStream::connect_timeout(&target, WAIT)
    })?
    .is_ok())
}

#[test]
fn the_daemon_enforces_a_directory_of_policies_on_a_bridged_node() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(3)?;
    lab.add_node_address()?;
    let dir = std::env::temp_dir().join(unique("palisade-daemon-"));
    fs::create_dir_all(&dir)?;
    let status = dir.join("status.json");
    let source = dir.join("source");
    fs::create_dir_all(&source)?;
    write_revision(&source, "cluster.yaml", &cluster(&lab), "1")?;
    // Listeners in every pod, kept for the whole test.
    let _listeners: Vec<TcpListener> = lab
        .pods
        .iter()
        .map(|p| in_netns(&p.netns, || TcpListener::bind((p.ip, PORT))))
        .collect::<Result<Result<_, _>, _>>()??;

    let mut daemon = Daemon::start(&lab.node, t.pins.base(), &source, &status, 300, &[])?;
    let s = wait_ready(&status, "1")?;
    assert_eq!(s["endpoints"].as_object().map(|o| o.len()), Some(3), "{s}");
    assert!(reaches(&lab, 2, 1)?, "no policy: c reaches b");

    write_revision(&source, "policy.yaml", B_FROM_A, "2")?;
    wait_ready(&status, "2")?;
    assert!(reaches(&lab, 0, 1)?, "a -> b allowed");
    assert!(!reaches(&lab, 2, 1)?, "c -> b denied");
    assert!(reaches(&lab, 1, 2)?, "b -> c: c is not isolated");

    // Drift: b's allow entry disappears behind the daemon's back.
    let mut maps = DatapathMaps::open(&t.pins)?;
    let ids = endpoint_ids(["x/a", "x/b", "x/c"].into_iter());
    let key = maps
        .policy_port
        .keys()
        .filter_map(Result::ok)
        .find(|k| k.endpoint == ids["x/b"])
        .context("b's entry")?;
    maps.policy_port.remove(&key)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while maps.policy_port.get(&key, 0).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reaches(&lab, 0, 1)?, "the resync restored a -> b");

    // A bad edit: the broken policy keeps its last good version.
    write_revision(
        &source,
        "policy.yaml",
        &B_FROM_A.replace("ports:", "portz:"),
        "3",
    )?;
    let s = wait_ready(&status, "3")?;
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
    let t = TempPins::new()?;
    let mut lab = BridgeLab::new(2)?;
    lab.add_node_address()?;
    let dir = std::env::temp_dir().join(unique("palisade-quarantine-"));
    let source = dir.join("source");
    fs::create_dir_all(&source)?;
    let status = dir.join("status.json");
    write_revision(&source, "cluster.yaml", &cluster(&lab), "1")?;
    let target = &lab.pods[0];
    let _listener = in_netns(&target.netns, || TcpListener::bind((target.ip, PORT)))??;
    // A resync period far beyond the test: only a link event can make the
    // daemon see the new veth within the deadline below.
    let mut daemon = Daemon::start(&lab.node, t.pins.base(), &source, &status, 600_000, &[])?;
    let s = wait_ready(&status, "1")?;
    assert_eq!(s["quarantined"].as_array().map(Vec::len), Some(0), "{s}");

    // A veth appears on the bridge before the source knows its pod.
    lab.add_pod()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&status)?)?;
        if v["quarantined"].as_array().is_some_and(|q| q.len() == 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("no link event made the daemon quarantine the new veth: {v}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !reaches(&lab, 2, 0)?,
        "quarantined: the new pod reaches nothing"
    );

    // Its pod arrives in the source: no policy selects it, so it is free.
    write_revision(&source, "cluster.yaml", &cluster(&lab), "2")?;
    let s = wait_ready(&status, "2")?;
    assert_eq!(s["quarantined"].as_array().map(Vec::len), Some(0), "{s}");
    assert!(reaches(&lab, 2, 0)?, "known and unselected: it reaches a");
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// Connects from `src` (an address of the calling namespace) to `to`.
fn connect_from(src: std::net::Ipv4Addr, to: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<()> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.bind(&SocketAddr::from((src, 0)).into())?;
        s.connect_timeout(&to.into(), WAIT)
    };
    attempt().is_ok()
}

const DENY_EXT1: &str = "apiVersion: palisade.dev/v1alpha1\nkind: PalisadeClusterNetworkPolicy\nmetadata: {name: no-ext1-on-8080}\nspec:\n  tier: Admin\n  subject: {podSelector: {matchLabels: {pod: a}}}\n  ingress: [{action: Deny, from: [{ipBlock: {cidr: 192.0.2.2/32}}], ports: [{port: 8080}]}]\n";

#[test]
fn the_prefilter_on_an_uplink_drops_denied_sources_and_refused_connection_attempts()
-> anyhow::Result<()> {
    use ebpf_common::maps::{TC_STATS, XDP_STATS};
    use palisade::stats::read_pinned;
    use palisade_tests::run;

    let t = TempPins::new()?;
    let lab = BridgeLab::new(1)?;
    lab.add_node_address()?;
    let pod = &lab.pods[0];
    // Outside the node: a host with two addresses behind the uplink.
    let outside = unique("bo");
    let uplink = unique("bu");
    run("ip", &["netns", "add", &outside])?;
    let _outside = scopeguard(&outside);
    let node = lab.node.as_str();
    run(
        "ip",
        &[
            "-n", node, "link", "add", &uplink, "type", "veth", "peer", "name", "eth0", "netns",
            &outside,
        ],
    )?;
    run(
        "ip",
        &["-n", node, "addr", "add", "192.0.2.1/24", "dev", &uplink],
    )?;
    run("ip", &["-n", node, "link", "set", &uplink, "up"])?;
    run(
        "ip",
        &[
            "netns",
            "exec",
            node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )?;
    for addr in ["192.0.2.2/24", "192.0.2.3/24"] {
        run("ip", &["-n", &outside, "addr", "add", addr, "dev", "eth0"])?;
    }
    run("ip", &["-n", &outside, "link", "set", "eth0", "up"])?;
    run(
        "ip",
        &[
            "-n",
            &outside,
            "route",
            "add",
            "10.199.1.0/24",
            "via",
            "192.0.2.1",
        ],
    )?;
    run(
        "ip",
        &[
            "-n",
            &pod.netns,
            "route",
            "add",
            "default",
            "via",
            "10.199.1.254",
        ],
    )?;
    // The node's default route leaves through the uplink: `--uplink auto`.
    run(
        "ip",
        &["-n", node, "route", "add", "default", "via", "192.0.2.2"],
    )?;
    let listeners: Vec<TcpListener> = [PORT, PORT + 1]
        .iter()
        .map(|&port| in_netns(&pod.netns, || TcpListener::bind((pod.ip, port))))
        .collect::<Result<Result<_, _>, _>>()??;

    let dir = std::env::temp_dir().join(unique("palisade-prefilter-"));
    let source = dir.join("source");
    fs::create_dir_all(&source)?;
    let status = dir.join("status.json");
    write_revision(&source, "cluster.yaml", &cluster(&lab), "1")?;
    write_revision(&source, "policy.yaml", DENY_EXT1, "1")?;
    let extra = ["--uplink", "auto", "--deny-cidr", "192.0.2.3/32"];
    let _daemon = Daemon::start(node, t.pins.base(), &source, &status, 300, &extra)?;
    wait_ready(&status, "1")?;

    let ext1 = std::net::Ipv4Addr::new(192, 0, 2, 2);
    let ext2 = std::net::Ipv4Addr::new(192, 0, 2, 3);
    let to = |port| SocketAddr::from((pod.ip, port));
    let xdp = |reason: &str| -> anyhow::Result<u64> {
        Ok(read_pinned(&t.pins.map(XDP_STATS))?
            .iter()
            .filter(|r| r.reason == reason)
            .map(|r| r.events)
            .sum())
    };
    let tc_denied = || -> anyhow::Result<u64> {
        Ok(read_pinned(&t.pins.map(TC_STATS))?
            .iter()
            .filter(|r| r.reason == "drop_policy_deny")
            .map(|r| r.events)
            .sum())
    };
    let reach = |src, port| in_netns(&outside, || connect_from(src, to(port)));
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
    fs::remove_file(source.join("policy.yaml"))?;
    fs::write(source.join(".revision"), "2")?;
    wait_ready(&status, "2")?;
    assert!(reach(ext1, PORT)?, "ext1 -> :8080 once the deny is gone");
    drop(listeners);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// Deletes the namespace `name` when dropped.
fn scopeguard(name: &str) -> impl Drop + '_ {
    struct Del<'a>(&'a str);
    impl Drop for Del<'_> {
        fn drop(&mut self) {
            let _ = palisade_tests::run("ip", &["netns", "del", self.0]);
        }
    }
    Del(name)
}
