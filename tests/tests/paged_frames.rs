//! Frames whose headers lie in page fragments: an AF_PACKET sender with a
//! TX_RING (trafgen's default) hands the stack skbs with only the Ethernet
//! header in the linear area, so the TC programs see the IP header out of
//! direct reach. They must pull it in and judge the frame by policy, never
//! drop it as cut short.

use std::{
    fs,
    net::UdpSocket,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade_lab::{
    enforcer::{DaemonArgs, Enforcer},
    netns::Netns,
};
use palisade_tests::{
    B_FROM_A, BridgeLab, TempPins, commit_and_wait, in_netns, lab_cluster, palisade_bin, unique,
};

const PORT: u16 = 9999;
const FRAMES: usize = 40;

/// The MAC of `eth0` in `ns`, as `ip` prints it.
fn mac_of(ns: &Netns) -> anyhow::Result<String> {
    let out = in_netns(ns, || {
        Command::new("ip")
            .args(["-o", "link", "show", "eth0"])
            .output()
    })??;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no MAC in {text}"))
}

/// Sends `FRAMES` UDP datagrams from pod 0 to pod 1 through trafgen's
/// TX_RING, from source ports counting up from `first_port`, and returns
/// how many pod 1's socket received.
fn send_through_the_ring(
    lab: &BridgeLab,
    dir: &std::path::Path,
    first_port: u16,
) -> anyhow::Result<usize> {
    let (a, b) = (&lab.pods[0], &lab.pods[1]);
    let config = dir.join("frames.trafgen");
    fs::write(
        &config,
        format!(
            "{{\n  eth(da={}, sa={}),\n  ipv4(sa={}, da={}, ttl=64),\n  udp(sp=dinc({first_port}, 65535, 1), dp={PORT}),\n  fill(0x61, 64)\n}}\n",
            mac_of(&b.netns)?,
            mac_of(&a.netns)?,
            a.ip,
            b.ip
        ),
    )?;
    let receiver = in_netns(&b.netns, || UdpSocket::bind((b.ip, PORT)))??;
    receiver.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut cmd = Command::new("trafgen");
    cmd.arg("-i")
        .arg(&config)
        .args(["-o", "eth0", "-n", &FRAMES.to_string(), "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    a.netns.spawn_inside(&mut cmd)?;
    let out = cmd
        .output()
        .context("running trafgen (netsniff-ng; scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "trafgen: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut received = 0;
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(3);
    while received < FRAMES && Instant::now() < deadline {
        if receiver.recv(&mut buf).is_ok() {
            received += 1;
        }
    }
    Ok(received)
}

/// The sum of `palisade_datapath_packets_total` series with `reason`.
fn datapath_count(metrics: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("palisade_datapath_packets_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn frames_with_headers_in_page_fragments_are_judged_by_policy() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let lab = BridgeLab::new(2)?;
    let dir = std::env::temp_dir().join(unique("palisade-paged-"));
    fs::create_dir_all(&dir)?;
    let args = DaemonArgs {
        resync_ms: 300,
        ..DaemonArgs::default()
    };
    let mut daemon = Enforcer::start_with(&palisade_bin()?, &lab.node, &dir, t.pins.base(), args)?;
    daemon.write("cluster.yaml", &lab_cluster(&lab, &[]))?;
    commit_and_wait(&mut daemon)?;

    // No policy selects b: every frame reaches it.
    let received = send_through_the_ring(&lab, &dir, 1024)?;
    let metrics = daemon.scrape(&lab.node)?;
    assert_eq!(
        datapath_count(&metrics, "drop_truncated"),
        0,
        "whole frames counted as cut short"
    );
    assert_eq!(received, FRAMES, "allowed frames from a TX_RING sender");

    // b admits a on TCP 8080 only: the same frames of new flows are
    // dropped by policy.
    daemon.write("policy.yaml", B_FROM_A)?;
    commit_and_wait(&mut daemon)?;
    let before = datapath_count(&daemon.scrape(&lab.node)?, "drop_default_deny");
    let received = send_through_the_ring(&lab, &dir, 20_000)?;
    assert_eq!(received, 0, "denied frames from a TX_RING sender");
    let metrics = daemon.scrape(&lab.node)?;
    let denied = datapath_count(&metrics, "drop_default_deny") - before;
    assert!(
        denied >= FRAMES as u64,
        "{denied} of {FRAMES} frames dropped by b's isolation: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("palisade_datapath_packets_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(datapath_count(&metrics, "drop_truncated"), 0);
    daemon.stop();
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}
