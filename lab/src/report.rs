//! What a scenario run found, for people (tables side by side, mismatches
//! marked) and for machines (`--json`).

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    drops::Confirmation,
    expect::Cell,
    probe::Observed,
    scenario::{CheckExpect, EventExpect, HeldExpect},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    /// Nothing mismatched, but something was skipped.
    Skipped,
    Invalid,
    /// A mismatch, or the run itself failed.
    Failed,
}

impl Outcome {
    /// docs/SCENARIOS.md: 0 matched, 1 mismatch, 2 invalid, 3 skipped.
    pub const fn exit_code(self) -> u8 {
        match self {
            Self::Passed => 0,
            Self::Failed => 1,
            Self::Invalid => 2,
            Self::Skipped => 3,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CellReport {
    pub from: String,
    pub to: String,
    pub expected: char,
    /// Absent for unchecked cells.
    #[serde(flatten)]
    pub observed: Option<Observed>,
    pub attempts: u32,
    /// For a blocked cell: Palisade's drop event, or why there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<Confirmation>,
}

impl CellReport {
    pub fn mismatch(&self) -> bool {
        match self.symbol() {
            '-' | 's' => false,
            // Blocked; its event was among those the kernel kept back.
            'x' => self.expected != 'X',
            observed => observed != self.expected,
        }
    }

    /// `X` only for a block Palisade reported: `x` when its event may have
    /// been lost, `?` when something else dropped it (never expected).
    /// `R` a refusal, `E` any other error (never expected).
    fn symbol(&self) -> char {
        match &self.observed {
            None => '-',
            Some(Observed::Reachable) => '.',
            Some(Observed::Blocked(_)) => match self.confirmation {
                Some(Confirmation::NoEvent) => '?',
                Some(Confirmation::Unconfirmed { .. }) => 'x',
                Some(Confirmation::Event { .. }) | None => 'X',
            },
            Some(Observed::Refused(_)) => 'R',
            Some(Observed::Error(_)) => 'E',
            Some(Observed::Skipped(_)) => 's',
        }
    }

    /// Why a mismatched cell is what it is.
    fn detail(&self) -> String {
        match (&self.observed, &self.confirmation) {
            (Some(Observed::Blocked(_)), Some(Confirmation::NoEvent)) => {
                " (no answer, and no drop event from Palisade: something else dropped it)".into()
            }
            (Some(Observed::Blocked(e) | Observed::Refused(e) | Observed::Error(e)), _) => {
                format!(" ({e})")
            }
            _ => String::new(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    /// The step it ran in (1-based), or 0 for the top-level `probes:`.
    pub step: usize,
    pub title: String,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub cells: Vec<CellReport>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "lowercase", tag = "observed", content = "detail")]
pub enum CheckObserved {
    Allowed,
    Denied,
    /// Neither: the command failed for another reason.
    Failed(String),
    Skipped(String),
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub step: usize,
    pub pod: String,
    /// The command line of a `run` check.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub run: Vec<String>,
    /// `exec`, `read`, `write` or `unlink`, with its `path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<u32>,
    pub expected: CheckExpect,
    #[serde(flatten)]
    pub observed: CheckObserved,
    /// For a check with `event:`, what the event stream said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<EventReport>,
}

/// The decision event a check expected, and the one that came (within
/// the window after the operation), if any.
#[derive(Debug, Serialize)]
pub struct EventReport {
    pub expected: EventExpect,
    /// The event's `action` (`block` or `audit`), absent when none came.
    pub observed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl EventReport {
    pub fn mismatch(&self) -> bool {
        let want = match self.expected {
            EventExpect::None => None,
            EventExpect::Audit => Some("audit"),
            EventExpect::Block => Some("block"),
        };
        self.observed.as_deref() != want
    }
}

impl CheckReport {
    pub fn mismatch(&self) -> bool {
        match (&self.observed, self.expected) {
            (CheckObserved::Skipped(_), _) => false,
            (CheckObserved::Allowed, CheckExpect::Allowed)
            | (CheckObserved::Denied, CheckExpect::Denied) => {
                self.event.as_ref().is_some_and(EventReport::mismatch)
            }
            _ => true,
        }
    }

    /// `x/a read /srv/pal/f from /srv/pal/cat as 1000`, or the command.
    fn describe(&self) -> String {
        let mut text = match (&self.operation, &self.path) {
            (Some(op), Some(path)) => format!("{op} {path}"),
            _ => self.run.join(" "),
        };
        if let Some(from) = &self.from {
            let _ = write!(text, " from {from}");
        }
        if let Some(uid) = self.user {
            let _ = write!(text, " as {uid}");
        }
        text
    }
}

/// A held connection's state at a `connect` (expected open) or `held` step.
#[derive(Debug, Serialize)]
pub struct HeldReport {
    pub step: usize,
    pub name: String,
    pub from: String,
    pub to: String,
    pub expected: HeldExpect,
    /// `open`, `cut` (no answer: its packets are dropped), `reset`,
    /// `refused` or `error` (each with the error), or `skipped` (with why).
    pub observed: String,
    pub detail: Option<String>,
}

impl HeldReport {
    /// A reset, a refusal or another error is neither open nor cut, so it
    /// matches no expectation.
    pub fn mismatch(&self) -> bool {
        match self.observed.as_str() {
            "open" => self.expected == HeldExpect::Cut,
            "cut" => self.expected == HeldExpect::Open,
            "skipped" => false,
            _ => true,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub action: String,
    /// From writing the change to the daemon reporting it in force.
    pub in_force_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    pub file: String,
    pub name: String,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub seconds: f64,
    pub steps: Vec<StepReport>,
    pub probes: Vec<ProbeReport>,
    pub checks: Vec<CheckReport>,
    pub held: Vec<HeldReport>,
    /// The daemon's drop and audit counters at the end (Prometheus text).
    pub metrics: Vec<String>,
}

impl ScenarioReport {
    pub fn new(file: &str, name: &str) -> Self {
        Self {
            file: file.to_owned(),
            name: name.to_owned(),
            outcome: Outcome::Passed,
            error: None,
            seconds: 0.0,
            steps: Vec::new(),
            probes: Vec::new(),
            checks: Vec::new(),
            held: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// The outcome from what was observed (an error already set wins).
    pub fn settle(&mut self) {
        if self.error.is_some() {
            return;
        }
        let cells = self.probes.iter().flat_map(|p| &p.cells);
        let mismatch = cells.clone().any(CellReport::mismatch)
            || self.checks.iter().any(CheckReport::mismatch)
            || self.held.iter().any(HeldReport::mismatch);
        let skipped = cells
            .clone()
            .any(|c| matches!(c.observed, Some(Observed::Skipped(_))))
            || self
                .checks
                .iter()
                .any(|c| matches!(c.observed, CheckObserved::Skipped(_)))
            || self.held.iter().any(|h| h.observed == "skipped");
        self.outcome = if mismatch {
            Outcome::Failed
        } else if skipped {
            Outcome::Skipped
        } else {
            Outcome::Passed
        };
    }

    pub fn render(&self, show_metrics: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "=== {} ({})", self.name, self.file);
        for p in &self.probes {
            render_probe(&mut out, p);
        }
        for c in &self.checks {
            let observed = match &c.observed {
                CheckObserved::Allowed => "allowed".to_owned(),
                CheckObserved::Denied => "denied".to_owned(),
                CheckObserved::Failed(e) => format!("failed: {e}"),
                CheckObserved::Skipped(r) => format!("skipped: {r}"),
            };
            let event = c.event.as_ref().map_or(String::new(), |e| {
                format!(
                    "; event expected {:?}, observed {}{}",
                    e.expected,
                    e.observed.as_deref().unwrap_or("none"),
                    e.policy
                        .as_deref()
                        .map_or(String::new(), |p| format!(" ({p})"))
                )
            });
            let _ = writeln!(
                out,
                "check {} `{}`: expected {:?}, observed {observed}{event}{}",
                c.pod,
                c.describe(),
                c.expected,
                if c.mismatch() { "   <- MISMATCH" } else { "" }
            );
        }
        for h in &self.held {
            let _ = writeln!(
                out,
                "held {} ({} -> {}) at step {}: expected {}, observed {}{}{}",
                h.name,
                h.from,
                h.to,
                h.step,
                match h.expected {
                    HeldExpect::Open => "open",
                    HeldExpect::Cut => "cut",
                },
                h.observed,
                h.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
                if h.mismatch() { "   <- MISMATCH" } else { "" }
            );
        }
        if show_metrics && !self.metrics.is_empty() {
            let _ = writeln!(out, "--- metrics (drop and audit counters, from /metrics)");
            for line in &self.metrics {
                let _ = writeln!(out, "{line}");
            }
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "error: {e}");
        }
        let in_force: Vec<String> = self
            .steps
            .iter()
            .filter_map(|s| Some(format!("{:.0}", s.in_force_ms?)))
            .collect();
        let _ = writeln!(
            out,
            "{} {} in {:.1} s (changes in force after {} ms)\n",
            match self.outcome {
                Outcome::Passed => "PASS",
                Outcome::Skipped => "SKIP",
                Outcome::Invalid => "INVALID",
                Outcome::Failed => "FAIL",
            },
            self.name,
            self.seconds,
            if in_force.is_empty() {
                "-".to_owned()
            } else {
                in_force.join(", ")
            }
        );
        out
    }
}

fn render_probe(out: &mut String, p: &ProbeReport) {
    let at = if p.step == 0 {
        "probes".to_owned()
    } else {
        format!("step {}", p.step)
    };
    let _ = writeln!(out, "--- {} ({at}, {:.1} s)", p.title, p.seconds);
    let width = p.rows.iter().map(String::len).max().unwrap_or(0);
    let col = p.columns.iter().map(String::len).max().unwrap_or(1).max(2);
    let cell = |from: &str, to: &str| p.cells.iter().find(|c| c.from == from && c.to == to);
    let header: String = p.columns.iter().map(|c| format!(" {c:>col$} ")).collect();
    let mut left = vec!["expected".to_owned(), format!("{:width$}{header}", "")];
    let mut right = vec!["observed".to_owned(), format!("{:width$}{header}", "")];
    for row in &p.rows {
        let (mut expected, mut observed) = (format!("{row:<width$}"), format!("{row:<width$}"));
        for column in &p.columns {
            let c = cell(row, column);
            let e = c.map_or(Cell::Unchecked.symbol(), |c| c.expected);
            let (o, mark) = c.map_or(('-', ' '), |c| {
                (c.symbol(), if c.mismatch() { '!' } else { ' ' })
            });
            let _ = write!(expected, " {e:>col$} ");
            let _ = write!(observed, " {o:>col$}{mark}");
        }
        left.push(expected);
        right.push(observed);
    }
    let half = left.iter().map(String::len).max().unwrap_or(0);
    for (l, r) in left.iter().zip(&right) {
        let _ = writeln!(out, "{l:<half$}   |   {}", r.trim_end());
    }
    for c in p.cells.iter().filter(|c| c.mismatch()) {
        let _ = writeln!(
            out,
            "  ! {} -> {}: expected {}, observed {}{}",
            c.from,
            c.to,
            c.expected,
            c.symbol(),
            c.detail()
        );
    }
    let mut skips: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unconfirmed: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &p.cells {
        if let Some(Observed::Skipped(r)) = &c.observed {
            *skips.entry(r).or_default() += 1;
        }
        if let Some(Confirmation::Unconfirmed { cause }) = &c.confirmation {
            *unconfirmed.entry(cause).or_default() += 1;
        }
    }
    for (reason, n) in skips {
        let _ = writeln!(out, "  s {n} cells skipped: {reason}");
    }
    for (cause, n) in unconfirmed {
        let _ = writeln!(
            out,
            "  x {n} blocked cells without their drop event, unconfirmed: {cause}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(expected: char, observed: Observed, confirmation: Option<Confirmation>) -> CellReport {
        CellReport {
            from: "y/a".into(),
            to: "x/a".into(),
            expected,
            observed: Some(observed),
            attempts: 2,
            confirmation,
        }
    }

    #[test]
    fn only_a_block_palisade_reported_or_may_have_reported_matches_x() {
        let blocked = || Observed::Blocked("timed out".into());
        let event = Confirmation::Event {
            direction: "ingress".into(),
            reason: "drop_default_deny".into(),
            policy: "default-deny".into(),
            node: None,
        };
        let lost = Confirmation::Unconfirmed {
            cause: "3 events rate-limited".into(),
        };
        for (c, symbol, mismatch) in [
            (cell('X', blocked(), Some(event)), 'X', false),
            (cell('X', blocked(), Some(lost.clone())), 'x', false),
            (cell('.', blocked(), Some(lost)), 'x', true),
            (cell('X', blocked(), Some(Confirmation::NoEvent)), '?', true),
            (
                cell('X', Observed::Refused("refused".into()), None),
                'R',
                true,
            ),
            (
                cell('R', Observed::Refused("refused".into()), None),
                'R',
                false,
            ),
            (cell('R', blocked(), None), 'X', true),
            (
                cell('X', Observed::Error("no route".into()), None),
                'E',
                true,
            ),
            (
                cell('.', Observed::Error("no route".into()), None),
                'E',
                true,
            ),
            (cell('.', Observed::Reachable, None), '.', false),
            (
                cell('X', Observed::Skipped("no SCTP".into()), None),
                's',
                false,
            ),
        ] {
            assert_eq!((c.symbol(), c.mismatch()), (symbol, mismatch), "{c:?}");
        }
    }
}
