//! Time from a policy file change to the daemon reporting it in force, at
//! 10, 100 and 1000 policies: the real daemon (its own process) on the lab's
//! simulated node with the standard model, the file source, the status file.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use palisade::model::standard;
use palisade_lab::fixtures::node_with_daemon;

const CHANGES: usize = 15;
const LIMIT: Duration = Duration::from_secs(120);

/// Policy `i` of `n`: each selects one standard-model pod and allows one
/// port from one namespace, so each is its own set of entries.
fn policy(i: usize, port: u32) -> String {
    let ns = ["x", "y", "z"][i % 3];
    let pod = ["a", "b", "c"][(i / 3) % 3];
    let from = ["y", "z", "x"][i % 3];
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{pod: {pod}}}}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: \"{from}\"}}}}}}], ports: [{{port: {port}}}]}}]\n"
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn one_size(bin: &Path, n: usize) -> anyhow::Result<()> {
    let snapshot = standard::snapshot();
    let tag = format!("lab{}-bench{n}", std::process::id());
    let (topology, mut enforcer, dir) = node_with_daemon(
        bin,
        &tag,
        vec!["10.244.0.0/16".parse()?],
        &snapshot,
        Vec::new(),
        palisade_lab::enforcer::Feed::Files,
    )
    .await?;
    let r = enforcer.commit()?;
    enforcer.wait(r, LIMIT).await?;

    let start = Instant::now();
    for i in 0..n {
        enforcer.write(&format!("p{i}.yaml"), &policy(i, 1000 + i as u32))?;
    }
    let r = enforcer.commit()?;
    enforcer.wait(r, LIMIT).await?;
    let initial = start.elapsed();

    let mut times = Vec::new();
    for change in 0..CHANGES {
        let start = Instant::now();
        enforcer.write("p0.yaml", &policy(0, 20_000 + change as u32))?;
        let r = enforcer.commit()?;
        enforcer.wait(r, LIMIT).await?;
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "{n:>6} policies | all applied from nothing {:>8.1} ms | one policy changed: median {:>6.1} ms, min {:>6.1}, max {:>6.1} ({CHANGES} changes)",
        ms(initial),
        ms(times[CHANGES / 2]),
        ms(times[0]),
        ms(times[CHANGES - 1]),
    );
    drop(enforcer);
    drop(topology);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

pub fn report(bin: &Path) -> anyhow::Result<()> {
    println!(
        "policy file change -> in force (the daemon's status file), standard model, real daemon process"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for n in [10, 100, 1000] {
            one_size(bin, n).await?;
        }
        Ok(())
    })
}
