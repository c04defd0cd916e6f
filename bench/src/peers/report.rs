//! The peers bench's figures: medians and ranges, the ratios the issue sets
//! goals for, `peers.md`, `peers.svg` and the last line.

use std::{fmt::Write as _, fs, path::Path, process::Command, time::Instant};

use plotters::prelude::*;

use super::{Case, PEERS, Peer, REPS, Results, SIZES, WINDOW};

/// Where and when the figures were taken.
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub date: String,
    pub commit: String,
    pub load_before: String,
    pub load_after: String,
    pub seconds: f64,
}

pub fn command(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        Self {
            cpu,
            cpus: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned()),
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: command("git", &["rev-parse", "--short", "HEAD"]),
            load_before: load_average(),
            load_after: String::new(),
            seconds: 0.0,
        }
    }

    pub fn finish(mut self, started: Instant) -> Self {
        self.load_after = load_average();
        self.seconds = started.elapsed().as_secs_f64();
        self
    }

    pub fn summary(&self) -> String {
        format!(
            "{} x {}, Linux {}, load average {}",
            self.cpus, self.cpu, self.kernel, self.load_before
        )
    }
}

/// Median, smallest and largest of a few values.
#[derive(Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

fn rate(results: &Results, peer: Peer, case: Case, n: usize) -> Option<Stat> {
    Stat::of(results.get(&(peer, case, n))?)
}

/// The ratio of two measurements taken in the same repetition, for each
/// repetition: pairs measured seconds apart, not minutes.
fn ratio(results: &Results, a: (Peer, Case, usize), b: (Peer, Case, usize)) -> Option<Stat> {
    let (x, y) = (results.get(&a)?, results.get(&b)?);
    let r: Vec<f64> = x.iter().zip(y).map(|(x, y)| x / y).collect();
    Stat::of(&r)
}

/// One ratio the issue sets a goal for.
pub struct Goal {
    pub what: String,
    pub goal: f64,
    /// The measured ratio (the worst over the sizes where the goal holds at
    /// every size) and where the worst was.
    pub measured: Option<Stat>,
    pub at: String,
}

impl Goal {
    pub fn verdict(&self) -> String {
        match self.measured {
            None => "not measured".into(),
            Some(s) if s.median >= self.goal => "met".into(),
            Some(s) => format!(
                "missed by {:.0} % ({:.2} of {})",
                (1.0 - s.median / self.goal) * 100.0,
                s.median,
                self.goal
            ),
        }
    }
}

pub struct Summary {
    pub goals: Vec<Goal>,
    last: String,
    /// The same ratios for the XDP pod-egress hook.
    xdp: String,
    /// No goal: what the allowed flood keeps of `none` with two empty
    /// programs where Palisade's run, what Palisade keeps of that, what a
    /// program that only takes the flood past the bridge delivers, and
    /// what it delivers behind Palisade's sending end.
    allow_floor: String,
}

/// [`Summary::allow_floor`]'s text.
fn allow_floor(results: &Results) -> String {
    use Case::Allow;
    let text = |(s, at): (Option<Stat>, String)| {
        s.map_or("-".into(), |s| {
            format!("{:.2} ({:.2}-{:.2}, {at})", s.median, s.min, s.max)
        })
    };
    let allowed = |a: Peer, b: Peer| text(worst(results, (a, Allow), (b, Allow)));
    format!(
        "two empty programs that pass ÷ none {}; palisade allow ÷ two empty programs that pass {}; one program that does nothing but hand the flood to the receiver past the bridge ÷ none {}; palisade's sending end, then that program ÷ none {}",
        allowed(Peer::EmptyTcPass, Peer::None),
        allowed(Peer::Palisade, Peer::EmptyTcPass),
        allowed(Peer::EmptyTcRedirect, Peer::None),
        allowed(Peer::PalisadeRedirect, Peer::None),
    )
}

fn worst(results: &Results, a: (Peer, Case), b: (Peer, Case)) -> (Option<Stat>, String) {
    SIZES
        .iter()
        .filter_map(|&n| Some((ratio(results, (a.0, a.1, n), (b.0, b.1, n))?, n)))
        .min_by(|x, y| x.0.median.total_cmp(&y.0.median))
        .map_or((None, String::new()), |(s, n)| {
            (Some(s), format!("worst at N={n}"))
        })
}

fn cell(s: Option<Stat>) -> String {
    s.map_or("-".into(), |s| format!("{:.2}", s.median))
}

fn ratios_for(results: &Results, p: Peer) -> (Vec<Goal>, String) {
    use Case::{Allow, Deny};
    use Peer::{EmptyTc, NftLinear, NftSet};
    let deny = |b: Peer, n: usize| ratio(results, (p, Deny, n), (b, Deny, n));
    let set = worst(results, (p, Deny), (NftSet, Deny));
    let empty = worst(results, (p, Deny), (EmptyTc, Deny));
    let none = worst(results, (p, Allow), (Peer::None, Allow));
    let flat = ratio(results, (p, Deny, 10_000), (p, Deny, 10));
    let goal = |what: &str, goal: f64, (measured, at): (Option<Stat>, String)| Goal {
        what: format!("{} {what}", p.name()),
        goal,
        measured,
        at,
    };
    let goals = vec![
        goal(
            "deny ÷ nft linear, 1k rules",
            10.0,
            (deny(NftLinear, 1_000), String::new()),
        ),
        goal(
            "deny ÷ nft linear, 10k rules",
            80.0,
            (deny(NftLinear, 10_000), String::new()),
        ),
        goal("deny ÷ nft set, every N", 1.0, set),
        goal("deny ÷ empty TC program that drops, every N", 0.87, empty),
        goal("allow ÷ none, every N", 0.95, none),
        goal("deny, 10k ÷ 10 rules", 0.95, (flat, String::new())),
    ];
    let line = format!(
        "deny@1000 {p}/nft-linear={} {p}/nft-set={} {p}/empty-tc={}; allow@1000 {p}/none={}; flat {p} deny@10000/deny@10={}",
        cell(deny(NftLinear, 1_000)),
        cell(deny(NftSet, 1_000)),
        cell(deny(EmptyTc, 1_000)),
        cell(ratio(
            results,
            (p, Allow, 1_000),
            (Peer::None, Allow, 1_000)
        )),
        cell(flat),
        p = p.name(),
    );
    (goals, line)
}

impl Summary {
    pub fn new(results: &Results) -> Self {
        let (goals, last) = ratios_for(results, Peer::Palisade);
        let (_, xdp) = ratios_for(results, Peer::PalisadeXdp);
        Self {
            goals,
            last,
            xdp,
            allow_floor: allow_floor(results),
        }
    }

    pub fn goals_text(&self) -> String {
        let mut t = format!(
            "goals (ratios: median over the {REPS} repetitions of the ratio within each; Palisade = the daemon's TC programs):\n"
        );
        for g in &self.goals {
            let m = g.measured.map_or("-".into(), |s| {
                format!("{:.2} ({:.2}-{:.2})", s.median, s.min, s.max)
            });
            let _ = writeln!(
                t,
                "  {:<62} goal >= {:<5} measured {m:<20} {}{}",
                g.what,
                g.goal,
                g.verdict(),
                if g.at.is_empty() {
                    String::new()
                } else {
                    format!(", {}", g.at)
                }
            );
        }
        let _ = writeln!(t, "  the XDP pod-egress hook instead: {}", self.xdp);
        let _ = write!(
            t,
            "  the allowed flood's floor (no goal; worst N): {}",
            self.allow_floor
        );
        t
    }

    pub fn last_line(&self) -> String {
        format!("peers: {}", self.last)
    }
}

fn k(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else {
        format!("{:.0}k", x / 1e3)
    }
}

pub fn markdown(results: &Results, summary: &Summary, machine: &Machine) -> String {
    let mut t = String::from("# Whole-path packet rate: Palisade and its peers\n\n");
    let _ = writeln!(
        t,
        "`make bench-peers` (`palisade-bench --peers`), {date}, commit {commit}; {cpus} x {cpu}, Linux {kernel}; load average {before} before, {after} after ({secs:.0} s).\n",
        date = machine.date,
        commit = machine.commit,
        cpus = machine.cpus,
        cpu = machine.cpu,
        kernel = machine.kernel,
        before = machine.load_before,
        after = machine.load_after,
        secs = machine.seconds,
    );
    let _ = writeln!(
        t,
        "trafgen in the sender pod, pinned to CPU 0, sends 64-byte UDP frames to the receiver pod across the node's bridge, the source port counting through 64,512 values. Rules: the sender may send UDP to N (address, port) pairs, the receiver's the last. **deny**: the flood goes to a port no rule allows; packets per second counted by the enforcer's own drop counter (the empty program has none: what the sender's veth passed to it). **allow**: the flood matches the last rule; packets per second the receiver's own end of its veth received (its namespace's `eth0`; counted there rather than at the node's end since a flood handed past the bridge never leaves that end). Each figure: the median over {REPS} repetitions (range in brackets) of a {:.1} s window, the enforcers interleaved. The window opens once the flood has run 0.2 s and, for Palisade (its conntrack emptied before each run), once the sender has gone through every source port: it measures the flood's steady state, every flow tracked (a new flow's cost is the slow-path bench's). Packets per second, k = 1,000.\n",
        WINDOW.as_secs_f64()
    );
    t.push_str("| enforcer | case |");
    for n in SIZES {
        let _ = write!(t, " N={n} |");
    }
    t.push_str("\n|---|---|");
    for _ in SIZES {
        t.push_str("---|");
    }
    t.push('\n');
    for peer in PEERS {
        for &case in peer.cases() {
            let _ = write!(t, "| {} | {} |", peer.name(), case.name());
            for n in SIZES {
                let c = rate(results, peer, case, n).map_or("-".into(), |s| {
                    format!("{} ({}-{})", k(s.median), k(s.min), k(s.max))
                });
                let _ = write!(t, " {c} |");
            }
            t.push('\n');
        }
    }
    t.push_str("\nThe enforcers:\n\n");
    for peer in PEERS {
        let _ = writeln!(t, "- `{}`: {}", peer.name(), peer.describe());
    }
    let _ = writeln!(
        t,
        "\n## Goals\n\nRatios: for each repetition the ratio of two figures measured in it, then the median and range over the {REPS} repetitions. Palisade: the daemon's TC programs (the default).\n\n| ratio | goal | measured | |\n|---|---|---|---|"
    );
    for g in &summary.goals {
        let m = g.measured.map_or("-".into(), |s| {
            format!("{:.2} ({:.2}-{:.2})", s.median, s.min, s.max)
        });
        let at = if g.at.is_empty() {
            String::new()
        } else {
            format!(", {}", g.at)
        };
        let _ = writeln!(
            t,
            "| {} | ≥ {} | {m}{at} | {} |",
            g.what,
            g.goal,
            g.verdict()
        );
    }
    let _ = writeln!(
        t,
        "\nThe XDP pod-egress hook instead of TC: `{}`.\n\nThe allowed flood's floor, an enforcer's two hooks on a same-node flow, and the most a flow taken off the bridge could deliver (no goal; the worst N): {}.\n\n```\n{}\n```",
        summary.xdp,
        summary.allow_floor,
        summary.last_line()
    );
    t
}

/// Deny and allow side by side: packets per second over N, both axes
/// logarithmic, a line per enforcer through the medians, bars for ranges.
pub fn svg(results: &Results, machine: &Machine, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(36);
    top.draw_text(
        &format!(
            "Packets per second, sender -> receiver across the node's bridge ({}, {} x {}, Linux {}; median of {REPS}, bars: range)",
            machine.date, machine.cpus, machine.cpu, machine.kernel
        ),
        &("sans-serif", 15).into_text_style(&top),
        (12, 12),
    )?;
    let all: Vec<f64> = results.values().flatten().copied().collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(100.0) / 1.5;
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0) * 1.5;
    let panels = body.split_evenly((1, 2));
    for (panel, case) in panels.iter().zip([Case::Deny, Case::Allow]) {
        let caption = match case {
            Case::Deny => "deny: dropped per second (the enforcer's counter)",
            Case::Allow => "allow by the last rule: delivered per second",
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((7.0f64..14_000.0).log_scale(), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("rules (N)")
            .y_desc("packets/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| k(*y))
            .draw()?;
        for (i, peer) in PEERS.iter().enumerate() {
            if !peer.cases().contains(&case) {
                continue;
            }
            let color = Palette99::pick(i).to_rgba();
            let stats: Vec<(f64, Stat)> = SIZES
                .iter()
                .filter_map(|&n| Some((n as f64, rate(results, *peer, case, n)?)))
                .collect();
            let line: Vec<(f64, f64)> = stats.iter().map(|(x, s)| (*x, s.median)).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(peer.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            chart.draw_series(stats.iter().map(|(x, s)| {
                ErrorBar::new_vertical(*x, s.min, s.median, s.max, color.stroke_width(1), 6)
            }))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
