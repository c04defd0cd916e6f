//! `palisade lab soak`: the chaos load for a long time (30 minutes by
//! default) while pods, namespaces and policies change without pause, none
//! of it moving a probed verdict. Every `sample` the daemon's resident
//! memory, open descriptors and map entries are read; they must stay flat,
//! and wrong verdicts and broken flows at 0. Writes the samples as CSV and
//! an SVG plot.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    path::PathBuf,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Lab, load::Load, plan_load};
use crate::{enforcer::Feed, plan::Scenario};

pub struct Options {
    pub bin: PathBuf,
    pub feed: Feed,
    pub duration: Duration,
    /// Between two samples.
    pub sample: Duration,
    /// Where the CSV and the plot go.
    pub out: PathBuf,
}

/// One sample of the daemon.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub seconds: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// `palisade_map_entries` by map.
    pub entries: BTreeMap<String, u64>,
    pub probes: u64,
    pub wrong: u64,
    pub broken: u64,
    pub changes: u64,
}

/// The maps whose entries are plotted: conntrack, the addresses' and the
/// prefixes' identities (pods churn the first), both policy maps, the
/// endpoints.
pub const PLOTTED: [&str; 6] = [
    "PAL_CT4",
    "PAL_IDENT_HOST",
    "PAL_IDENTITY",
    "PAL_POLICY_PORT",
    "PAL_POLICY",
    "PAL_ENDPOINTS",
];

pub async fn run(text: &str, file: &str, options: &Options) -> anyhow::Result<Vec<Sample>> {
    let scenario = Scenario::load(text, file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let mut lab = Lab::start(&scenario, &options.bin, options.feed, "soak").await?;
    let (cells, flows) = plan_load(&scenario, &mut lab).await?;
    println!(
        "soak on {} for {:?}: {} cells, {} held flows, a change every pass, a sample every {:?}",
        scenario.name,
        options.duration,
        cells.len(),
        flows.len(),
        options.sample
    );
    let load = tokio::task::spawn_blocking(move || {
        Load::start(
            cells,
            flows,
            Duration::from_millis(300),
            Duration::from_millis(300),
            Duration::from_millis(100),
        )
    })
    .await??;
    lab.tally = load.tally.clone();
    lab.tally.set_phase("soak");
    let started = Instant::now();
    let mut churn = Churn::default();
    let mut samples = vec![sample(&lab, 0.0, churn.changes)?];
    let mut next_sample = options.sample;
    let mut latencies = Vec::new();
    while started.elapsed() < options.duration {
        let t = Instant::now();
        churn.step(&mut lab).await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        if started.elapsed() >= next_sample {
            let s = sample(&lab, started.elapsed().as_secs_f64(), churn.changes)?;
            println!(
                "  {:>6.0} s: RSS {} KiB, {} fds, {} changes, {} probes, {} wrong, {} broken, entries {:?}",
                s.seconds, s.rss_kib, s.fds, s.changes, s.probes, s.wrong, s.broken, s.entries
            );
            samples.push(s);
            next_sample += options.sample;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut last = sample(&lab, started.elapsed().as_secs_f64(), churn.changes)?;
    // Joining the threads blocks: the runtime must go on serving the pods
    // until the last request is answered.
    let tally = tokio::task::spawn_blocking(move || load.stop()).await?;
    lab.tally.spent("soak", started.elapsed().as_secs_f64());
    // What broke while the load wound down counts too.
    (last.probes, last.wrong, last.broken) = (
        tally.probes.load(Ordering::Relaxed),
        tally.wrong_count(),
        tally.broken_count(),
    );
    samples.push(last);
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{} changes, change to in force: p50 {:.0} ms, p99 {:.0} ms",
        churn.changes,
        pct(0.5),
        pct(0.99)
    );
    for w in super::lock(&tally.wrong).iter() {
        println!("  wrong: {w}");
    }
    for b in super::lock(&tally.broken).iter() {
        println!("  broken: {b}");
    }
    std::fs::create_dir_all(&options.out)?;
    let csv = options.out.join("soak.csv");
    std::fs::write(&csv, to_csv(&samples))?;
    let svg = options.out.join("soak.svg");
    std::fs::write(&svg, plot(&samples))?;
    println!("samples: {}, plot: {}", csv.display(), svg.display());
    Ok(samples)
}

/// First and last thirds of the run, compared: the figure the soak is
/// judged by (growth of the later mean over the earlier).
pub fn growth(samples: &[Sample], of: impl Fn(&Sample) -> f64) -> f64 {
    let third = (samples.len() / 3).max(1);
    let mean = |s: &[Sample]| s.iter().map(&of).sum::<f64>() / s.len().max(1) as f64;
    let early = mean(&samples[..third]);
    let late = mean(&samples[samples.len() - third..]);
    if early == 0.0 { 1.0 } else { late / early }
}

fn sample(lab: &Lab, seconds: f64, changes: u64) -> anyhow::Result<Sample> {
    let d = lab.daemons.daemons().first().context("no daemon")?;
    let pid = d.enforcer.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let mut entries = BTreeMap::new();
    for line in d.enforcer.scrape(&d.netns)?.lines() {
        if let Some(rest) = line.strip_prefix("palisade_map_entries{map=\"")
            && let Some((map, value)) = rest.split_once("\"} ")
            && PLOTTED.contains(&map)
        {
            entries.insert(
                map.to_owned(),
                value.trim().parse::<f64>().unwrap_or(0.0) as u64,
            );
        }
    }
    Ok(Sample {
        seconds,
        rss_kib,
        fds,
        entries,
        probes: lab.tally.probes.load(Ordering::Relaxed),
        wrong: lab.tally.wrong_count(),
        broken: lab.tally.broken_count(),
        changes,
    })
}

/// The changes, in turn; none moves a probed verdict: extra labels no
/// policy reads, policies that admit unused addresses to a pod already
/// isolated, pods on another node.
#[derive(Default)]
struct Churn {
    changes: u64,
    policies: VecDeque<String>,
    remote: VecDeque<String>,
}

/// How many churned policies and remote pod files live at once.
const LIVE: usize = 20;

impl Churn {
    async fn step(&mut self, lab: &mut Lab) -> anyhow::Result<()> {
        let n = self.changes;
        match n % 5 {
            0 => {
                let i = (n / 5) as usize % lab.state.pods.len();
                std::sync::Arc::make_mut(&mut lab.state.pods[i])
                    .labels
                    .insert("churn".into(), (n % 7).to_string());
                lab.write_cluster()?;
            }
            1 => {
                let names: Vec<String> = lab.state.namespaces.keys().cloned().collect();
                let name = &names[(n / 5) as usize % names.len()];
                if let Some(ns) = lab.state.namespaces.get_mut(name) {
                    ns.labels.insert("churn".into(), (n % 7).to_string());
                }
                lab.write_cluster()?;
            }
            2 | 3 => {
                // Add one (2), or edit the oldest in place (3).
                let name = if n % 5 == 2 || self.policies.is_empty() {
                    let name = format!("churn-{n}.yaml");
                    self.policies.push_back(name.clone());
                    name
                } else {
                    self.policies.front().cloned().unwrap_or_default()
                };
                lab.daemons.write(&name, &policy(n))?;
                if self.policies.len() > LIVE
                    && let Some(old) = self.policies.pop_front()
                {
                    lab.daemons.remove(&old)?;
                }
            }
            _ => {
                let name = format!("churn-remote-{n}.yaml");
                lab.daemons.write(&name, &remote_pods(n))?;
                self.remote.push_back(name);
                if self.remote.len() > LIVE
                    && let Some(old) = self.remote.pop_front()
                {
                    lab.daemons.remove(&old)?;
                }
            }
        }
        self.changes += 1;
        lab.commit().await.with_context(|| format!("change {n}"))
    }
}

fn policy(n: u64) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: churn-{n}, namespace: z}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 172.18.{}.{}/32}}}}], ports: [{{port: {}, protocol: TCP}}]}}]\n",
        (n / 250) % 250,
        n % 250 + 1,
        30_000 + n % 1000
    )
}

/// 50 pods on another node, with addresses of their own.
fn remote_pods(n: u64) -> String {
    let mut text = String::new();
    for i in 0..50 {
        let k = n * 50 + i;
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: churn-{k}, namespace: y, labels: {{churn: r{}}}}}\nspec: {{nodeName: elsewhere}}\nstatus: {{podIP: 10.251.{}.{}}}\n",
            k % 13,
            (k / 250) % 250,
            k % 250 + 1
        );
    }
    text
}

fn to_csv(samples: &[Sample]) -> String {
    let mut out = format!(
        "seconds,rss_kib,fds,changes,probes,wrong,broken,{}\n",
        PLOTTED.join(",")
    );
    for s in samples {
        let entries: Vec<String> = PLOTTED
            .iter()
            .map(|m| s.entries.get(*m).copied().unwrap_or(0).to_string())
            .collect();
        let _ = writeln!(
            out,
            "{:.1},{},{},{},{},{},{},{}",
            s.seconds,
            s.rss_kib,
            s.fds,
            s.changes,
            s.probes,
            s.wrong,
            s.broken,
            entries.join(",")
        );
    }
    out
}

/// One panel a series, each on its own scale from 0 to its maximum (the
/// figure to read is flatness, not the values, which the CSV has).
fn plot(samples: &[Sample]) -> String {
    type Series<'a> = (&'a str, Box<dyn Fn(&Sample) -> f64 + 'a>);
    let mut series: Vec<Series> = vec![
        ("daemon RSS (KiB)", Box::new(|s: &Sample| s.rss_kib as f64)),
        ("open fds", Box::new(|s: &Sample| s.fds as f64)),
        ("wrong verdicts", Box::new(|s: &Sample| s.wrong as f64)),
        ("held flows broken", Box::new(|s: &Sample| s.broken as f64)),
    ];
    for m in PLOTTED {
        series.push((
            m,
            Box::new(move |s: &Sample| s.entries.get(m).copied().unwrap_or(0) as f64),
        ));
    }
    let (w, panel_h, left, top) = (760.0, 90.0, 70.0, 30.0);
    let height = top + series.len() as f64 * (panel_h + 30.0);
    let t_max = samples.last().map_or(1.0, |s| s.seconds.max(1.0));
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\">palisade lab soak: {:.0} minutes, {} changes, {} probes</text>\n",
        w + left + 20.0,
        t_max / 60.0,
        samples.last().map_or(0, |s| s.changes),
        samples.last().map_or(0, |s| s.probes),
    );
    for (i, (name, f)) in series.iter().enumerate() {
        let y0 = top + i as f64 * (panel_h + 30.0) + 20.0;
        let max = samples.iter().map(f).fold(0.0, f64::max);
        let scale = if max > 0.0 { max * 1.1 } else { 1.0 };
        let points: Vec<String> = samples
            .iter()
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    left + s.seconds / t_max * w,
                    y0 + panel_h - f(s) / scale * panel_h
                )
            })
            .collect();
        let _ = write!(
            svg,
            "<text x=\"{left}\" y=\"{:.1}\">{name} (max {max:.0}, growth of the last third over the first {:.3})</text>\n<rect x=\"{left}\" y=\"{y0:.1}\" width=\"{w}\" height=\"{panel_h}\" fill=\"none\" stroke=\"#ccc\"/>\n<text x=\"4\" y=\"{:.1}\">{:.0}</text><text x=\"4\" y=\"{:.1}\">0</text>\n<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            y0 - 4.0,
            growth(samples, f),
            y0 + 10.0,
            scale,
            y0 + panel_h,
            points.join(" ")
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{:.1}\">time (s), 0 to {t_max:.0}</text>\n</svg>\n",
        height - 6.0
    );
    svg
}
