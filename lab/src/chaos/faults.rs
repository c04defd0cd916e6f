//! The faults of a chaos run. None of them changes a policy the load
//! probes: whatever a fault does, every probe must see the table's verdict
//! and every held flow must carry on.

use std::{
    fmt::Write as _,
    fs,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use palisade::paths::PinDir;

use super::{Lab, first, flood::flood};
use crate::enforcer::Feed;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the daemon, a second without one, a restart.
    Kill,
    /// Killed while a large policy change is being written.
    KillMidChange,
    /// The next daemon is of another ABI: every pinned map is foreign.
    AbiUpgrade,
    /// A policy file truncated and garbled in place, then 1,000 broken files.
    BrokenFiles,
    /// Conntrack flooded past its size, identities and policy past theirs.
    FullMaps,
    /// Denied packets at the rate a pod can send them: the event ring full.
    EventFlood,
    /// The API server killed, restarted, compacted (410), slow, unavailable.
    ApiServer,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Self::Kill,
        Self::KillMidChange,
        Self::AbiUpgrade,
        Self::BrokenFiles,
        Self::FullMaps,
        Self::EventFlood,
        Self::ApiServer,
    ];
    /// The ones that take seconds, for `make test`.
    pub const SHORT: [Fault; 5] = [
        Self::Kill,
        Self::KillMidChange,
        Self::AbiUpgrade,
        Self::BrokenFiles,
        Self::EventFlood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill -9",
            Self::KillMidChange => "kill mid-change",
            Self::AbiUpgrade => "ABI upgrade",
            Self::BrokenFiles => "broken source files",
            Self::FullMaps => "maps filled",
            Self::EventFlood => "event flood",
            Self::ApiServer => "API server faults",
        }
    }

    /// By its name or its variant's, in any case, spaces and dashes
    /// ignored (`kill-mid-change`, `broken-files`, `"maps filled"`).
    pub fn parse(name: &str) -> Option<Self> {
        let plain = |s: &str| s.replace([' ', '-'], "").to_lowercase();
        Self::ALL
            .into_iter()
            .find(|f| plain(f.name()) == plain(name) || plain(&format!("{f:?}")) == plain(name))
    }

    /// Broken files concern the file source, the API server the
    /// Kubernetes one.
    pub fn applies_to(self, feed: Feed) -> bool {
        match self {
            Self::BrokenFiles => feed == Feed::Files,
            Self::ApiServer => feed == Feed::Kube,
            _ => true,
        }
    }

    /// Injects the fault, waits until the daemons have everything in force
    /// again, and says what happened.
    pub async fn inject(self, lab: &mut Lab) -> anyhow::Result<String> {
        match self {
            Self::Kill => {
                let t = kill_and_restart(lab, Duration::from_secs(1)).await?;
                Ok(format!(
                    "SIGKILL, 1 s without a daemon, restarted: in force again {t:.2} s after the restart"
                ))
            }
            Self::KillMidChange => kill_mid_change(lab).await,
            Self::AbiUpgrade => abi_upgrade(lab).await,
            Self::BrokenFiles => broken_files(lab).await,
            Self::FullMaps => full_maps(lab).await,
            Self::EventFlood => {
                // z/b may open nothing: every datagram is denied at its veth.
                let to = vec![(lab.ipv4_of("x/a")?, 81), (lab.ipv4_of("x/b")?, 81)];
                let f = flood(lab.netns_of("z/b")?, lab.ipv4_of("z/b")?, to, 300_000).await?;
                Ok(format!(
                    "{} denied datagrams from z/b in {:.1} s ({:.0}/s)",
                    f.packets,
                    f.seconds,
                    f.packets as f64 / f.seconds.max(0.001)
                ))
            }
            Self::ApiServer => api_server(lab).await,
        }
    }
}

fn kill_all(lab: &mut Lab) {
    for d in lab.daemons.daemons_mut() {
        let _ = kill(Pid::from_raw(d.enforcer.pid() as i32), Signal::SIGKILL);
    }
}

fn restart_all(lab: &mut Lab) -> anyhow::Result<()> {
    let bin = lab.bin.clone();
    for d in lab.daemons.daemons_mut() {
        d.enforcer.restart(&bin, &d.netns)?;
    }
    lab.daemons.restarted()
}

/// Seconds from the restart until everything is in force.
async fn kill_and_restart(lab: &mut Lab, without: Duration) -> anyhow::Result<f64> {
    kill_all(lab);
    tokio::time::sleep(without).await;
    restart_all(lab)?;
    let t = Instant::now();
    lab.commit().await.context("after the restart")?;
    Ok(t.elapsed().as_secs_f64())
}

const LARGE: &str = "chaos-large.yaml";

/// 1,000 policies that admit 1,000 addresses nothing in the lab has to
/// z/a, each on its own port: many map writes, no probed verdict changed
/// (z/a is isolated already).
fn large_change() -> String {
    let mut text = String::new();
    for i in 0..1000u32 {
        let _ = write!(
            text,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: large-{i}, namespace: z}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 172.16.{}.{}/32}}}}], ports: [{{port: {}, protocol: TCP}}]}}]\n",
            i / 250,
            i % 250 + 1,
            10_000 + i
        );
    }
    text
}

async fn kill_mid_change(lab: &mut Lab) -> anyhow::Result<String> {
    let large = large_change();
    // How long the change takes undisturbed, both ways.
    let t = Instant::now();
    lab.daemons.write(LARGE, &large)?;
    lab.commit().await.context("the large change")?;
    let add = t.elapsed();
    let t = Instant::now();
    lab.daemons.remove(LARGE)?;
    lab.commit().await.context("removing the large change")?;
    let remove = t.elapsed();
    let mut kills = Vec::new();
    for (i, fraction) in [0.25, 0.5, 0.75, 0.9].into_iter().enumerate() {
        let adding = i % 2 == 0;
        let whole = if adding {
            lab.daemons.write(LARGE, &large)?;
            add
        } else {
            lab.daemons.remove(LARGE)?;
            remove
        };
        lab.daemons.publish()?;
        let at = whole.mul_f64(fraction);
        tokio::time::sleep(at).await;
        kill_all(lab);
        tokio::time::sleep(Duration::from_millis(300)).await;
        restart_all(lab)?;
        lab.commit().await.context("after the restart")?;
        kills.push(format!(
            "{} at {:.0} ms",
            if adding { "adding" } else { "removing" },
            at.as_secs_f64() * 1000.0
        ));
    }
    Ok(format!(
        "1,000 policies take {:.0} ms to add and {:.0} ms to remove undisturbed; killed while {}",
        add.as_secs_f64() * 1000.0,
        remove.as_secs_f64() * 1000.0,
        kills.join(", ")
    ))
}

async fn abi_upgrade(lab: &mut Lab) -> anyhow::Result<String> {
    for d in lab.daemons.daemons_mut() {
        d.enforcer.stop();
    }
    let current = PinDir::new(first(lab)?.pins());
    let older = PinDir::with_abi(current.base(), current.abi() - 1);
    fs::rename(current.root(), older.root()).with_context(|| {
        format!(
            "presenting {} as {}",
            current.root().display(),
            older.root().display()
        )
    })?;
    restart_all(lab)?;
    let t = Instant::now();
    lab.commit().await.context("after the upgrade")?;
    Ok(format!(
        "every pin presented as ABI v{}'s: in force {:.2} s after the start; the older ABI's pins {}",
        older.abi(),
        t.elapsed().as_secs_f64(),
        if older.root().exists() {
            "are still there"
        } else {
            "were retired"
        }
    ))
}

async fn broken_files(lab: &mut Lab) -> anyhow::Result<String> {
    let dir = first(lab)?.source_dir();
    let (name, good) = lab
        .policy_files
        .iter()
        .next()
        .map(|(n, t)| (n.clone(), t.clone()))
        .context("no policy file")?;
    let path = dir.join(&name);
    // In place, as an editor without a rename would leave it.
    fs::write(&path, &good.as_bytes()[..good.len() / 2])?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut garbled = good.clone().into_bytes();
    for (i, b) in garbled.iter_mut().enumerate() {
        if i % 7 == 3 {
            *b = 0xff;
        }
    }
    fs::write(&path, &garbled)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let broken: Vec<String> = (0..1000).map(|i| format!("broken-{i:04}.yaml")).collect();
    for (i, name) in broken.iter().enumerate() {
        fs::write(dir.join(name), broken_text(i, &good))?;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let errors = lab
        .daemons
        .daemons()
        .first()
        .and_then(|d| d.enforcer.status().ok())
        .and_then(|s| s["errors"].as_array().map(Vec::len))
        .unwrap_or(0);
    for name in &broken {
        fs::remove_file(dir.join(name))?;
    }
    lab.daemons.write(&name, &good)?;
    lab.commit().await.context("with the good files back")?;
    Ok(format!(
        "{name} truncated in place, then garbled, then 1,000 broken files beside it: the status listed {errors} errors"
    ))
}

/// Broken in a different way each: cut short, not YAML, an unknown field,
/// an invalid CIDR, not UTF-8, an unknown kind.
fn broken_text(i: usize, good: &str) -> Vec<u8> {
    match i % 6 {
        // Cut inside its name: never a valid policy (one cut later could
        // be, and would rightly be enforced).
        0 => {
            let name = good.find("name: ").map_or(good.len() / 2, |at| at + 6 + i % 3);
            good.as_bytes()[..name].to_vec()
        }
        1 => b"apiVersion: [networking.k8s.io/v1\nkind: {{\n".to_vec(),
        2 => good.replacen("spec:", "spec:\n  unknownField: 1", 1).into_bytes(),
        3 => format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad-{i}, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 10.0.0.{i}/40}}}}]}}]\n"
        )
        .into_bytes(),
        4 => vec![0xc3, 0x28, b':', 0xff, 0xfe, b'\n'],
        _ => format!("apiVersion: v9\nkind: Gadget\nmetadata: {{name: g-{i}}}\n").into_bytes(),
    }
}

const REMOTE: &str = "cluster-remote";
const CROWD: &str = "chaos-crowd.yaml";

async fn full_maps(lab: &mut Lab) -> anyhow::Result<String> {
    let mut notes = Vec::new();
    // Conntrack: new flows from x/a to two pods it may reach, twice the
    // map's size (x/a's egress tracks every one, whatever y's ingress
    // says); the held flows are in use all along and must stay. To ports
    // nothing listens on: a flood into the probed listeners would fill
    // their sockets and fail probes Palisade passed. A target takes 64,512
    // flows (one per source port), so eight targets for 2 x 262,144.
    let mut to = Vec::new();
    for pod in ["y/a", "y/c"] {
        for port in [9, 13, 17, 19] {
            to.push((lab.ipv4_of(pod)?, port));
        }
    }
    let flows = 2 * u64::from(ebpf_common::maps::size::CT4);
    let f = flood(lab.netns_of("x/a")?, lab.ipv4_of("x/a")?, to, flows).await?;
    notes.push(format!(
        "{} new UDP flows in {:.1} s (conntrack holds {})",
        f.packets,
        f.seconds,
        ebpf_common::maps::size::CT4
    ));
    // Identities: remote pods with a label set each (a file each thousand:
    // the file source's document limit). Through the files, more than the
    // address map holds. Through the API, as many as the prefix map holds
    // and 4,000 more: at 69,536 pods the daemon (a debug build) takes the
    // watch's deletions in passes of about 1.4 s per 800 pods, longer in
    // all than this fault's limits (docs/CHAOS.md, "Gaps").
    let pods = if lab.daemons.feed().is_some() {
        ebpf_common::maps::size::IDENTITY as usize + 4_000
    } else {
        ebpf_common::maps::size::IDENTITY_HOST as usize + 4_000
    };
    let files = remote_pods(pods);
    for (i, text) in files.iter().enumerate() {
        lab.daemons.write(&format!("{REMOTE}-{i:03}.yaml"), text)?;
    }
    let said = settle(lab, Duration::from_secs(180)).await;
    notes.push(format!("{pods} remote pods with a label set each: {said}"));
    // Policy: z/a admits each of them on four ports.
    lab.daemons.write(CROWD, &crowd())?;
    let said = settle(lab, Duration::from_secs(120)).await;
    notes.push(format!("a policy admitting them all on 4 ports: {said}"));
    lab.daemons.remove(CROWD)?;
    for i in 0..files.len() {
        lab.daemons.remove(&format!("{REMOTE}-{i:03}.yaml"))?;
    }
    lab.commit().await.context("without the remote pods")?;
    Ok(notes.join("; "))
}

/// Publishes and waits until the daemon has passed over the change (in
/// force, or refused with an error), then says which.
async fn settle(lab: &mut Lab, limit: Duration) -> String {
    if let Err(e) = lab.daemons.publish() {
        return format!("not published: {e:#}");
    }
    let t = Instant::now();
    match lab.commit_or_refused(limit).await {
        Ok(s) => format!("{s} after {:.1} s", t.elapsed().as_secs_f64()),
        Err(e) => format!("{e:#}"),
    }
}

/// `n` pods on another node, a thousand a file.
fn remote_pods(n: usize) -> Vec<String> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|chunk| {
            let mut text = String::new();
            for i in chunk {
                let _ = write!(
                    text,
                    "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: r{i}, namespace: x, labels: {{crowd: r{i}}}}}\nspec: {{nodeName: elsewhere}}\nstatus: {{podIP: 10.{}.{}.{}}}\n",
                    // 250 addresses a /24, 250 /24s a /16, from 10.250/16 on.
                    250 + i / 62_500,
                    i % 62_500 / 250,
                    i % 250 + 1
                );
            }
            text
        })
        .collect()
}

/// z/a (isolated already) admits every remote pod on four ports.
fn crowd() -> String {
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: crowd, namespace: z}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: crowd, operator: Exists}]}}], ports: [{port: 20000}, {port: 20001}, {port: 20002}, {port: 20003}]}]\n".into()
}

async fn api_server(lab: &mut Lab) -> anyhow::Result<String> {
    let (netns, _) = lab.nodes.api_server_at()?;
    let netns = netns.try_clone()?;
    let feed = lab.daemons.feed_mut().context("no API server")?;
    feed.stop_server();
    tokio::time::sleep(Duration::from_secs(3)).await;
    feed.restart_server(&netns)?;
    let server = feed.server()?;
    server.drop_watches();
    server.compact();
    server.set_delay(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.set_delay(Duration::ZERO);
    server.set_unavailable(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.set_unavailable(false);
    // A change must land after all of it.
    let t = Instant::now();
    lab.daemons.write(LARGE, &large_change())?;
    lab.commit()
        .await
        .context("a change after the API faults")?;
    let landed = t.elapsed().as_secs_f64();
    lab.daemons.remove(LARGE)?;
    lab.commit().await?;
    Ok(format!(
        "killed for 3 s and restarted, watches dropped and history compacted (410), 1.5 s slow for 5 s, unavailable for 3 s; a change landed {landed:.1} s after"
    ))
}
