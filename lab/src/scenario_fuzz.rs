//! Fuzzing of the scenario parser (`scenario.rs` and the checks of
//! `plan`, everything `palisade lab run` does to a file before it touches
//! the kernel), within the budget of the normal test run
//! (`palisade::model::mutate::fuzz_cases`; `PALISADE_FUZZ_CASES=50x cargo
//! test -p palisade-lab fuzz` for a long run): mutations of every file of
//! the project's scenario suite, random YAML-shaped text, and random bytes.
//! The property: no panic, and a file is either loaded or refused with an
//! error that names it and says something. A failure shrinks (see
//! `palisade::model::mutate`) and replays (the runner is seeded).
//!
//! Found so far: nothing, in the budget and in a long run
//! (`PALISADE_FUZZ_CASES=50x`).

use palisade::model::{
    limits::check_file,
    mutate::{fuzz_cases, mutant, shaped},
};
use proptest::{
    collection::vec,
    prelude::*,
    test_runner::{Config, TestCaseError, TestRng, TestRunner},
};

use crate::plan::Scenario;

const FILE: &str = "fuzz.yaml";

/// The scenario suite, every file of it.
const SEEDS: &[&str] = &[
    include_str!("../../tests/scenarios/deny-all-egress.yaml"),
    include_str!("../../tests/scenarios/deny-all-ingress.yaml"),
    include_str!("../../tests/scenarios/established-connections.yaml"),
    include_str!("../../tests/scenarios/externals.yaml"),
    include_str!("../../tests/scenarios/invalid/nodes-with-checks.yaml"),
    include_str!("../../tests/scenarios/invalid/unknown-key.yaml"),
    include_str!("../../tests/scenarios/invalid/unknown-kind.yaml"),
    include_str!("../../tests/scenarios/invalid/unknown-pod.yaml"),
    include_str!("../../tests/scenarios/ipblock-pods.yaml"),
    include_str!("../../tests/scenarios/ipv6.yaml"),
    include_str!("../../tests/scenarios/lsm/allowlist.yaml"),
    include_str!("../../tests/scenarios/lsm/audit.yaml"),
    include_str!("../../tests/scenarios/lsm/deep-path.yaml"),
    include_str!("../../tests/scenarios/lsm/exec-block.yaml"),
    include_str!("../../tests/scenarios/lsm/file-read-block.yaml"),
    include_str!("../../tests/scenarios/lsm/kubearmor-allow-posture.yaml"),
    include_str!("../../tests/scenarios/lsm/kubearmor-file.yaml"),
    include_str!("../../tests/scenarios/lsm/kubearmor-process-block.yaml"),
    include_str!("../../tests/scenarios/lsm/no-policy.yaml"),
    include_str!("../../tests/scenarios/lsm/patterns.yaml"),
    include_str!("../../tests/scenarios/lsm/posture-annotation.yaml"),
    include_str!("../../tests/scenarios/lsm/read-only.yaml"),
    include_str!("../../tests/scenarios/lsm/shared-prefix.yaml"),
    include_str!("../../tests/scenarios/lsm/symlink.yaml"),
    include_str!("../../tests/scenarios/lsm/update.yaml"),
    include_str!("../../tests/scenarios/match-expressions.yaml"),
    include_str!("../../tests/scenarios/multi-node-egress.yaml"),
    include_str!("../../tests/scenarios/multi-node-ingress.yaml"),
    include_str!("../../tests/scenarios/multi-node-relabel.yaml"),
    include_str!("../../tests/scenarios/named-ports-differ.yaml"),
    include_str!("../../tests/scenarios/namespace-selector.yaml"),
    include_str!("../../tests/scenarios/new-pods.yaml"),
    include_str!("../../tests/scenarios/palisade-audit.yaml"),
    include_str!("../../tests/scenarios/palisade-cluster-tiers.yaml"),
    include_str!("../../tests/scenarios/palisade-deny-priority.yaml"),
    include_str!("../../tests/scenarios/pod-and-namespace-selector.yaml"),
    include_str!("../../tests/scenarios/pod-selector-ingress.yaml"),
    include_str!("../../tests/scenarios/ports-and-ranges.yaml"),
    include_str!("../../tests/scenarios/relabel.yaml"),
    include_str!("../../tests/scenarios/sctp/sctp.yaml"),
    include_str!("../../tests/scenarios/selftest/mismatch.yaml"),
    include_str!("../../tests/scenarios/selftest/unserved-port.yaml"),
    include_str!("../../tests/scenarios/steps-update-delete.yaml"),
    include_str!("../../tests/scenarios/union-of-policies.yaml"),
    include_str!("../../tests/scenarios/unserved-ports.yaml"),
];

/// The property (module docs) for a file of `bytes`, read as the file
/// source reads a file (the lab itself reads scenario files whole).
fn loads_cleanly(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(text) = check_file(bytes) else {
        return Ok(());
    };
    if let Err(e) = Scenario::load(text, FILE) {
        prop_assert!(!e.message.trim().is_empty(), "an empty error");
        let shown = e.to_string();
        prop_assert!(shown.starts_with(FILE), "{} does not name the file", shown);
    }
    Ok(())
}

/// `cases` values of `strategy` through [`loads_cleanly`], from a fixed
/// seed; a failure panics with the shrunk input.
pub(crate) fn run_seeded<S: Strategy>(
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases: fuzz_cases(cases),
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    if let Err(e) = TestRunner::new_with_rng(config, rng).run(&strategy, test) {
        panic!("{e}");
    }
}

#[test]
fn fuzz_scenario_seeds_load() {
    for (i, seed) in SEEDS.iter().enumerate() {
        loads_cleanly(seed.as_bytes()).unwrap_or_else(|e| panic!("seed {i}: {e}"));
    }
}

#[test]
fn fuzz_mutated_scenarios() {
    run_seeded(
        600,
        vec(any::<u32>(), 0..25).prop_map(|c| mutant(SEEDS, &c)),
        |bytes| loads_cleanly(&bytes),
    );
}

#[test]
fn fuzz_random_scenario_text() {
    run_seeded(
        200,
        vec(any::<u32>(), 0..120).prop_map(|c| shaped(&c).into_bytes()),
        |bytes| loads_cleanly(&bytes),
    );
    run_seeded(200, vec(any::<u8>(), 0..300), |bytes| loads_cleanly(&bytes));
}
