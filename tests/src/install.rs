//! The install (`manifests/`, a kustomize base) as the tests see it:
//! rendered by the real `kubectl kustomize`, split into documents, and the
//! node agent's capability set read from the DaemonSet, the one place it
//! is written.
//!
//! `tests/tests/install.rs` checks the rendered objects; a guest test runs
//! the daemon with exactly [`capabilities`] to prove the set is enough.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Container};

/// The kustomize base.
pub fn manifests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// The DaemonSet as written, compiled into the test binaries so that a
/// guest without the source tree reads the same capability set.
pub const DAEMONSET_YAML: &str = include_str!("../../manifests/daemonset.yaml");

/// The container that runs `palisade daemon`.
pub const CONTAINER: &str = "palisade";

/// `kubectl kustomize manifests/`, the objects `kubectl apply -k` would send.
pub fn render() -> anyhow::Result<String> {
    let dir = manifests_dir();
    let output = match Command::new("kubectl").arg("kustomize").arg(&dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("kubectl is not on PATH: `make setup` installs it (Debian's kubernetes-client)")
        }
        Err(e) => return Err(e).context("running kubectl"),
    };
    ensure!(
        output.status.success(),
        "kubectl kustomize {} failed ({}): {}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8(output.stdout).context("kubectl kustomize printed something not UTF-8")
}

/// The documents of a multi-document YAML text, as JSON values (empty
/// documents left out).
pub fn documents(yaml: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(yaml).context("parsing the rendered YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The daemon's container in a DaemonSet.
pub fn container(ds: &DaemonSet) -> anyhow::Result<&Container> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
        .with_context(|| format!("the DaemonSet has no container {CONTAINER:?}"))
}

/// The capabilities the daemon's container adds (after dropping ALL), as
/// Kubernetes writes them: `BPF`, `NET_ADMIN`, without `CAP_`.
pub fn capabilities_of(ds: &DaemonSet) -> anyhow::Result<Vec<String>> {
    let caps = container(ds)?
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .context("the daemon's container has no securityContext.capabilities")?;
    Ok(caps.add.clone().unwrap_or_default())
}

/// The capability set of the install, read from `manifests/daemonset.yaml`
/// (no kubectl needed: the guest has none). The guest test runs the daemon
/// with exactly these, resolved by [`capability_number`].
pub fn capabilities() -> anyhow::Result<Vec<String>> {
    let ds: DaemonSet =
        serde_saphyr::from_str(DAEMONSET_YAML).context("parsing manifests/daemonset.yaml")?;
    capabilities_of(&ds)
}

/// The number of a capability named as Kubernetes names it (`NET_ADMIN`;
/// a `CAP_` prefix is accepted too), or `None` for a name Linux lacks: the
/// daemon's own table, the one it reports its capabilities by.
pub use palisade::node::capabilities::number as capability_number;
