//! The daemon's model of the LSM programs (`palisade explain --pod`) held
//! to every check of the process and file scenario suite: the verdict the
//! model predicts for each check must be the one the file expects, which
//! the guest in turn observes from the kernel. A scenario whose rules and
//! the model disagree fails here, natively, before any guest boots.

use std::path::{Path, PathBuf};

use palisade::{
    model::Snapshot,
    observe::explain_lsm::{Operation as Asked, explain_lsm},
};

use super::{Action, FixtureKind, Operation, Scenario};
use crate::scenario::CheckExpect;

/// What a symbolic link fixture finally points to (the kernel judges
/// the target).
fn resolved(s: &Scenario, path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..8 {
        match s.fixtures.iter().find(|f| f.path == p).map(|f| &f.kind) {
            Some(FixtureKind::Link(to)) => p = to.clone(),
            _ => break,
        }
    }
    p
}

fn owner(s: &Scenario, path: &Path) -> u32 {
    s.fixtures
        .iter()
        .find(|f| f.path == path)
        .map_or(0, |f| f.owner)
}

/// Whether plain permissions let `user` do `asked` on the fixture at
/// `path` (a check is judged on errno, and EACCES is denied too).
fn permitted(s: &Scenario, path: &Path, asked: Asked, user: u32) -> bool {
    let Some(f) = s.fixtures.iter().find(|f| f.path == path) else {
        return true;
    };
    let bit = match asked {
        Asked::Read => 0o4,
        Asked::Write => 0o2,
        Asked::Exec => 0o1,
    };
    if user == 0 {
        return asked != Asked::Exec || f.mode & 0o111 != 0;
    }
    let shift = if f.owner == user { 6 } else { 0 };
    f.mode >> shift & bit != 0
}

/// Every check of `file` with the model's verdict and the expected one.
fn judged(file: &Path) -> Vec<(String, bool, bool)> {
    let text = std::fs::read_to_string(file).unwrap();
    let s = Scenario::load(&text, &file.display().to_string()).unwrap();
    let mut snap: Snapshot = s.cluster.clone();
    let mut out = Vec::new();
    for action in &s.actions {
        match action {
            Action::Apply(docs) | Action::Update(docs) => {
                for d in docs {
                    snap.policies.retain(|p| p.key() != d.key);
                    snap.policies.push(d.policy.clone().into());
                }
            }
            Action::Delete(docs) => {
                snap.policies
                    .retain(|p| docs.iter().all(|d| d.key != p.key()));
            }
            Action::RelabelPod(key, labels) => {
                if let Some(p) = snap.pods.iter_mut().find(|p| &p.key() == key) {
                    std::sync::Arc::make_mut(p).labels = labels.clone();
                }
            }
            Action::RelabelNamespace(name, labels) => {
                if let Some(ns) = snap.namespaces.get_mut(name) {
                    ns.labels = labels.clone();
                }
            }
            Action::Create(pods) => snap.pods.extend(pods.iter().map(|p| p.pod.clone().into())),
            Action::Check(checks) => {
                for c in checks {
                    let (asked, from) = match &c.operation {
                        Operation::Exec(_) => (Asked::Exec, c.from.clone()),
                        Operation::Read(_) => (Asked::Read, c.from.clone()),
                        Operation::Write(_) | Operation::Unlink(_) => {
                            (Asked::Write, c.from.clone())
                        }
                        Operation::Run(_) => continue,
                    };
                    // unlink(2) judges the name itself; the others what it
                    // leads to.
                    let named = c.operation.path().unwrap();
                    let path = match c.operation {
                        Operation::Unlink(_) => named.to_path_buf(),
                        _ => resolved(&s, named),
                    };
                    let from = from.map(|f| f.display().to_string());
                    let (decision, text) = explain_lsm(
                        &snap,
                        &c.pod,
                        asked,
                        &path.display().to_string(),
                        from.as_deref(),
                    )
                    .unwrap();
                    let user = c.user.unwrap_or(0);
                    let owns = owner(&s, &path) == user;
                    let by_mode = matches!(c.operation, Operation::Unlink(_))
                        || permitted(&s, &path, asked, user);
                    let allowed = by_mode && decision.is_none_or(|d| !d.blocks(owns));
                    let what = format!(
                        "{}: {} {}\n{text}",
                        file.display(),
                        c.pod,
                        c.operation.describe()
                    );
                    out.push((what, allowed, c.expect == CheckExpect::Allowed));
                }
            }
            Action::Probe(_) | Action::Connect(_) | Action::Held(_) => {}
        }
    }
    out
}

#[test]
fn the_model_predicts_every_lsm_scenario_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios/lsm");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the suite is in {}", dir.display());
    let mut count = 0;
    let mut wrong = Vec::new();
    for file in &files {
        for (what, model, expected) in judged(file) {
            count += 1;
            if model != expected {
                wrong.push(format!(
                    "model allowed={model}, file allowed={expected}: {what}"
                ));
            }
        }
    }
    assert!(count >= 50, "only {count} checks");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
