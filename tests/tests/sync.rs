//! The syncer against real pinned maps: it writes the compiler's state,
//! writes nothing when nothing changed, rewrites only the endpoints a change
//! touches, repairs an entry deleted behind its back, and removes what no
//! pod holds any more.

use std::collections::BTreeMap;

use anyhow::Context as _;
use palisade::{
    compile::compile,
    datapath::DatapathMaps,
    features::Features,
    loader,
    model::{Snapshot, parse::parse_documents, scenario::ScenarioFile},
    sync::{apply, endpoint_ids},
};
use palisade_tests::TempPins;

const DENY_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}], ports: [{port: 80}]}]\n";

fn standard(policies: &str) -> anyhow::Result<Snapshot> {
    let mut s = ScenarioFile::parse("name: s\nmodel: standard\n", "s.yaml")?.snapshot("s.yaml")?;
    for doc in parse_documents(policies, "p.yaml", "default") {
        s.policies.push(doc?.policy());
    }
    Ok(s)
}

/// Fake ifindexes: the maps do not care whether the interfaces exist.
fn placed(s: &Snapshot) -> BTreeMap<String, u32> {
    s.pods
        .iter()
        .enumerate()
        .map(|(i, p)| (p.key(), 1000 + i as u32))
        .collect()
}

#[test]
fn the_syncer_writes_differences_only_and_repairs_drift() -> anyhow::Result<()> {
    let t = TempPins::new()?;
    let _loaded = loader::load_all(&t.pins, &Features::probe())?;
    let mut maps = DatapathMaps::open(&t.pins)?;

    let s = standard(DENY_X)?;
    let on = placed(&s);
    let first = apply(&mut maps, &compile(&s), &on, &[])?;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.endpoints_written.len(), 9);
    assert_eq!(first.identities_written, 9);

    let again = apply(&mut maps, &compile(&s), &on, &[])?;
    assert!(!again.changed(), "an unchanged state rewrote: {again:?}");

    // Behind the daemon's back: one of x/a's entries disappears.
    let ids = endpoint_ids(on.keys().map(String::as_str));
    let victim = maps
        .policy_port
        .keys()
        .filter_map(Result::ok)
        .find(|k| k.endpoint == ids["x/a"])
        .context("x/a has an exact-port entry")?;
    maps.policy_port.remove(&victim)?;
    let repaired = apply(&mut maps, &compile(&s), &on, &[])?;
    assert_eq!(repaired.endpoints_written, vec!["x/a".to_owned()]);
    assert!(!apply(&mut maps, &compile(&s), &on, &[])?.changed());

    // A relabel of y/b touches x/a (its peers) and y/b's own identity.
    let mut relabelled = s.clone();
    if let Some(p) = relabelled.pods.iter_mut().find(|p| p.key() == "y/b") {
        p.labels.insert("role".into(), "web".into());
    }
    let r = apply(&mut maps, &compile(&relabelled), &on, &[])?;
    assert_eq!(r.endpoints_written, vec!["x/a".to_owned()], "{r:?}");
    assert_eq!(
        r.identities_written, 1,
        "y/b's address moves to a new identity"
    );

    // A pod gone from the node: its endpoint and generations go.
    let mut fewer = on.clone();
    let gone = fewer.remove("x/a").context("x/a placed")?;
    let r = apply(&mut maps, &compile(&relabelled), &fewer, &[])?;
    assert_eq!(r.endpoints_removed, vec![gone]);
    assert!(maps.endpoint(gone)?.is_none());
    let stale = maps
        .policy
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.data().endpoint == ids["x/a"])
        .count()
        + maps
            .policy_port
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.endpoint == ids["x/a"])
            .count();
    assert_eq!(stale, 0, "x/a's entries are gone");
    Ok(())
}
