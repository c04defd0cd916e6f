//! `palisade lab demo`: the standard model with a directory of policies,
//! reachability before and after them (the expected tables are what the
//! compiler predicts; the observed ones what the kernel did), and why one
//! denied flow was denied.

use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};

use palisade::{
    compile::{compile, evaluate},
    model::{Protocol, Snapshot, yaml},
    observe::explain::{self, Side, Target},
};

use crate::scenario::ScenarioFile;

pub struct Demo {
    /// The generated scenario file (docs/SCENARIOS.md format).
    pub scenario: String,
    /// `explain` of one flow the policies deny.
    pub explained: Option<String>,
}

const PORT: u16 = 80;

/// Every YAML document of every `.yaml` file in `dir`, in file-name order.
fn policy_documents(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let values: Vec<Value> =
            yaml::documents(&text).with_context(|| format!("{}", file.display()))?;
        docs.extend(values.into_iter().filter(|v| !v.is_null()));
    }
    Ok(docs)
}

/// The table text the compiled state predicts for TCP port 80.
fn predicted(snapshot: &Snapshot) -> (String, Vec<(String, String)>) {
    let compiled = compile(snapshot);
    let keys: Vec<String> = snapshot.pods.iter().map(|p| p.key()).collect();
    let mut text = format!("     {}\n", keys.join("  "));
    let mut denied = Vec::new();
    for from in &snapshot.pods {
        text.push_str(&from.key());
        for to in &snapshot.pods {
            let cell = if from.key() == to.key() {
                '-'
            } else if evaluate::connection(&compiled, from, to, Protocol::Tcp.number(), PORT) {
                '.'
            } else {
                denied.push((from.key(), to.key()));
                'X'
            };
            text.push_str(&format!("    {cell}"));
        }
        text.push('\n');
    }
    (text, denied)
}

pub fn build(policies: &Path) -> anyhow::Result<Demo> {
    let docs = policy_documents(policies)?;
    let base = json!({
        "name": "demo",
        "model": "standard",
        "policies": docs,
    });
    let base_text = yaml::to_string(&base)?;
    let parsed = ScenarioFile::parse(&base_text, "demo")?;
    let snapshot = parsed.snapshot("demo")?;
    let keys: Vec<Value> = snapshot.policies.iter().map(|p| json!(p.key())).collect();
    let (after, denied) = predicted(&snapshot);
    let probe = |expect: Value| json!([{"port": PORT, "protocol": "TCP", "expect": expect}]);
    let scenario = json!({
        "name": "demo",
        "description": format!(
            "The standard model before and after the policies of {}; the expected tables are the compiler's prediction.",
            policies.display()
        ),
        "model": "standard",
        "policies": base["policies"],
        "steps": [
            {"probe": probe(json!({"all": "."}))},
            {"apply": keys},
            {"probe": probe(json!(after))},
        ],
    });
    // Prefer a flow an explicit rule denies: it shows the most.
    let explained_flow = denied
        .iter()
        .filter_map(|(from, to)| {
            let pod = |k: &str| snapshot.pods.iter().find(|p| p.key() == k);
            let (from, to) = (pod(from), pod(to));
            let (from, to) = (Target::Pod(from?), Target::Pod(to?));
            let e = explain::explain(&snapshot, from, to, Protocol::Tcp, PORT);
            let by_rule = [&e.egress, &e.ingress]
                .iter()
                .any(|s| matches!(s, Side::DeniedByRule { .. }));
            Some((by_rule, explain::render(&e, from, to, Protocol::Tcp, PORT)))
        })
        .fold(
            None,
            |best: Option<(bool, String)>, (by_rule, text)| match best {
                Some((true, _)) => best,
                Some((false, _)) if !by_rule => best,
                _ => Some((by_rule, text)),
            },
        );
    Ok(Demo {
        scenario: yaml::to_string(&scenario)?,
        explained: explained_flow.map(|(_, text)| text),
    })
}
