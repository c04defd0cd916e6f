//! The install (`kubectl apply -k manifests/`): rendered by the real
//! `kubectl kustomize`, every object checked against the Kubernetes API
//! types with unknown fields as errors, the ClusterRole against the access
//! table the Kubernetes source is built from, and the DaemonSet against
//! the invariants the design depends on (not privileged, node-wide, the
//! probes, the host mounts).
//!
//! Needs kubectl (`make setup` installs it) but no cluster and no root.
//! The capability set is read by `palisade_tests::install::capabilities`,
//! which the guest test uses to run the daemon with exactly that set.

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::util::intstr::IntOrString,
};
use palisade::source::kube::access;
use palisade_tests::install::{
    self, CONTAINER, capabilities, capabilities_of, capability_number, container,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

const NAMESPACE: &str = "palisade-system";

fn rendered() -> anyhow::Result<Vec<Value>> {
    install::documents(&install::render()?)
}

fn text<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// `Kind/name` of a document, for messages.
fn label(doc: &Value) -> String {
    format!("{}/{}", text(doc, "/kind"), text(doc, "/metadata/name"))
}

/// The one rendered object of a kind, as its API type.
fn the<T: DeserializeOwned>(docs: &[Value], kind: &str) -> anyhow::Result<T> {
    let found: Vec<&Value> = docs.iter().filter(|d| text(d, "/kind") == kind).collect();
    match found.as_slice() {
        [one] => serde_json::from_value((*one).clone())
            .with_context(|| format!("{} does not parse as {kind}", label(one))),
        _ => bail!("expected one {kind}, rendered {}", found.len()),
    }
}

/// Where `back` (the object after a trip through its API type) differs
/// from `orig` (as rendered): a field the type does not know is dropped by
/// the trip, so it shows up here as lost.
fn differences(path: &str, orig: &Value, back: &Value, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                let at = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => differences(&at, value, other, out),
                    None => out.push(format!("unknown field {at}")),
                }
            }
            for key in b.keys().filter(|k| !o.contains_key(*k)) {
                out.push(format!("field {path}.{key} appeared in the round trip"));
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (value, other)) in o.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), value, other, out);
            }
        }
        // JSON has one number type: a schema's `minimum: 0` is held as a
        // float and comes back as 0.0, the same value.
        (Value::Number(o), Value::Number(b)) if o.as_f64() == b.as_f64() => {}
        _ if orig != back => out.push(format!("{path}: {orig} came back as {back}")),
        _ => {}
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value) -> anyhow::Result<Vec<String>> {
    let typed: T = serde_json::from_value(doc.clone())?;
    let back = serde_json::to_value(&typed)?;
    let mut out = Vec::new();
    differences("", doc, &back, &mut out);
    Ok(out)
}

/// Checks one rendered object against the API type of its kind; an
/// unknown kind is an error.
fn check_against_api_type(doc: &Value) -> anyhow::Result<Vec<String>> {
    match (text(doc, "/apiVersion"), text(doc, "/kind")) {
        ("v1", "Namespace") => round_trip::<Namespace>(doc),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(doc),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(doc),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(doc),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(doc)
        }
        (api_version, kind) => bail!("unknown kind {kind} ({api_version}): not checked"),
    }
}

#[test]
fn kustomize_renders_the_base() -> anyhow::Result<()> {
    let docs = rendered()?;
    let mut objects: Vec<String> = docs.iter().map(label).collect();
    objects.sort();
    let mut expected = vec![
        "ClusterRole/palisade",
        "ClusterRoleBinding/palisade",
        "ConfigMap/palisade-node",
        "Role/palisade",
        "RoleBinding/palisade",
        "CustomResourceDefinition/palisadeclusternetworkpolicies.palisade.dev",
        "CustomResourceDefinition/palisadenetworkpolicies.palisade.dev",
        "DaemonSet/palisade",
        "Namespace/palisade-system",
        "ServiceAccount/palisade",
    ];
    expected.sort();
    assert_eq!(
        objects, expected,
        "the base renders these objects (examples/ and grafana/ are not in it)"
    );
    // Namespaced objects land in the install's namespace; cluster-scoped
    // ones carry none.
    for doc in &docs {
        let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str);
        match text(doc, "/kind") {
            "ServiceAccount" | "DaemonSet" | "ConfigMap" | "Role" | "RoleBinding" => {
                assert_eq!(namespace, Some(NAMESPACE), "{}", label(doc))
            }
            _ => assert_eq!(namespace, None, "{} is cluster-scoped", label(doc)),
        }
    }
    Ok(())
}

#[test]
fn every_object_has_only_fields_the_api_knows() -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for doc in rendered()? {
        match check_against_api_type(&doc) {
            Ok(differences) => failures.extend(
                differences
                    .into_iter()
                    .map(|d| format!("{}: {d}", label(&doc))),
            ),
            Err(e) => failures.push(format!("{}: {e:#}", label(&doc))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn the_round_trip_catches_an_unknown_field() -> anyhow::Result<()> {
    let docs = rendered()?;
    let mut ds = docs
        .into_iter()
        .find(|d| text(d, "/kind") == "DaemonSet")
        .context("no DaemonSet")?;
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] =
        Value::Bool(true);
    let found = check_against_api_type(&ds)?;
    let typo = "unknown field .spec.template.spec.containers[0].securityContext.privilegd";
    assert!(found.iter().any(|f| f == typo), "{found:?}");
    let unknown = serde_json::json!({"apiVersion": "v1", "kind": "Secret"});
    assert!(check_against_api_type(&unknown).is_err());
    Ok(())
}

/// (group, resource, verb) triples, one per permission.
type Grant = (String, String, String);

fn grants(rules: Vec<PolicyRule>) -> BTreeSet<Grant> {
    let mut granted = BTreeSet::<Grant>::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "rules name resources only: {rule:?}"
        );
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

fn uses(table: &[access::Access]) -> BTreeSet<Grant> {
    table
        .iter()
        .flat_map(|a| {
            a.verbs
                .iter()
                .map(|v| (a.group.to_owned(), a.resource.to_owned(), (*v).to_owned()))
        })
        .collect()
}

fn assert_same(what: &str, granted: &BTreeSet<Grant>, used: &BTreeSet<Grant>) {
    let missing: Vec<&Grant> = used.difference(granted).collect();
    let extra: Vec<&Grant> = granted.difference(used).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what} differs from daemon/src/source/kube/access.rs:\n  \
         used by the code, not granted: {missing:?}\n  granted, never used: {extra:?}"
    );
}

#[test]
fn the_roles_grant_exactly_the_access_tables() -> anyhow::Result<()> {
    let docs = rendered()?;
    let role: ClusterRole = the(&docs, "ClusterRole")?;
    assert_same(
        "the ClusterRole (access::ALL)",
        &grants(role.rules.unwrap_or_default()),
        &uses(&access::ALL),
    );
    let own: Role = the(&docs, "Role")?;
    assert_eq!(own.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_same(
        "the Role in the install's namespace (access::IN_OWN_NAMESPACE)",
        &grants(own.rules.unwrap_or_default()),
        &uses(&access::IN_OWN_NAMESPACE),
    );
    let own_binding: RoleBinding = the(&docs, "RoleBinding")?;
    assert_eq!(
        (
            own_binding.role_ref.kind.as_str(),
            own_binding.role_ref.name.as_str()
        ),
        ("Role", "palisade")
    );

    let binding: ClusterRoleBinding = the(&docs, "ClusterRoleBinding")?;
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", "palisade")
    );
    let subjects: Vec<(String, String, Option<String>)> = binding
        .subjects
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.kind, s.name, s.namespace))
        .collect();
    assert_eq!(
        subjects,
        [(
            "ServiceAccount".to_owned(),
            "palisade".to_owned(),
            Some(NAMESPACE.to_owned())
        )]
    );
    let ds: DaemonSet = the(&docs, "DaemonSet")?;
    let pod = ds
        .spec
        .and_then(|s| s.template.spec)
        .context("no pod spec")?;
    assert_eq!(pod.service_account_name.as_deref(), Some("palisade"));
    Ok(())
}

/// The value following `flag` in a command line.
fn flag<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command
        .iter()
        .position(|a| a == flag)
        .and_then(|i| command.get(i + 1))
        .map(String::as_str)
}

#[test]
fn the_daemonset_keeps_its_invariants() -> anyhow::Result<()> {
    let docs = rendered()?;
    let ds: DaemonSet = the(&docs, "DaemonSet")?;
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            failures.push(what.to_owned());
        }
    };

    let spec = ds.spec.as_ref().context("no spec")?;
    let pod = spec.template.spec.as_ref().context("no pod spec")?;
    let c = container(&ds)?;
    check(pod.containers.len() == 1, "one container, the daemon's");

    // The pod: node-wide, in the node's network namespace.
    check(pod.host_network == Some(true), "hostNetwork: true");
    check(pod.host_pid != Some(true), "hostPID is not true");
    check(
        pod.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"),
        "dnsPolicy ClusterFirstWithHostNet",
    );
    check(
        pod.priority_class_name.as_deref() == Some("system-node-critical"),
        "priorityClassName system-node-critical",
    );
    check(
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        }),
        "a toleration {operator: Exists} (every taint)",
    );
    check(
        pod.termination_grace_period_seconds
            .is_some_and(|s| s <= 10),
        "terminationGracePeriodSeconds at most 10",
    );
    let strategy = spec.update_strategy.as_ref();
    check(
        strategy.and_then(|s| s.type_.as_deref()) == Some("RollingUpdate")
            && strategy
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref())
                == Some(&IntOrString::Int(1)),
        "updateStrategy RollingUpdate with maxUnavailable 1",
    );
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    check(
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the selector matches the pod template's labels",
    );

    // The container: the daemon, on the API server.
    check(c.name == CONTAINER, "the container is named palisade");
    check(
        c.image.as_deref() == Some("palisade:0.1.0"),
        "image palisade:0.1.0",
    );
    let command = c.command.clone().unwrap_or_default();
    check(
        command.get(1).map(String::as_str) == Some("daemon")
            && command.iter().any(|a| a == "--kube"),
        "command: palisade daemon --kube",
    );
    check(
        flag(&command, "--uplink") == Some("auto"),
        "command: --uplink auto",
    );
    let status_file = flag(&command, "--status-file").unwrap_or_default();
    check(
        status_file == "/run/palisade/status.json",
        "command: --status-file /run/palisade/status.json",
    );
    let metrics_port = flag(&command, "--metrics-addr")
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<i32>().ok());
    check(
        metrics_port == Some(9963),
        "command: --metrics-addr 0.0.0.0:9963",
    );
    check(
        c.env.iter().flatten().any(|e| {
            e.name == "NODE_NAME"
                && e.value.is_none()
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .is_some_and(|f| f.field_path == "spec.nodeName")
        }),
        "env NODE_NAME from fieldRef spec.nodeName",
    );
    let probe = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.http_get.as_ref())
            .map(|h| (h.path.clone().unwrap_or_default(), h.port.clone()))
    };
    check(
        probe(c.readiness_probe.as_ref()) == Some(("/readyz".to_owned(), IntOrString::Int(9963))),
        "readinessProbe httpGet /readyz on 9963",
    );
    check(
        probe(c.liveness_probe.as_ref()) == Some(("/healthz".to_owned(), IntOrString::Int(9963))),
        "livenessProbe httpGet /healthz on 9963",
    );
    let resources = c.resources.as_ref();
    check(
        resources
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
            && resources
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| l.contains_key("memory")),
        "cpu and memory requests, a memory limit",
    );

    // Not privileged: root's uid without root's capabilities.
    let sc = c.security_context.as_ref().context("no securityContext")?;
    check(sc.privileged == Some(false), "privileged: false");
    check(
        sc.allow_privilege_escalation == Some(false),
        "allowPrivilegeEscalation: false",
    );
    check(
        sc.read_only_root_filesystem == Some(true),
        "readOnlyRootFilesystem: true",
    );
    check(sc.run_as_user == Some(0), "runAsUser: 0");
    let caps = sc.capabilities.as_ref();
    check(
        caps.and_then(|c| c.drop.clone()) == Some(vec!["ALL".to_owned()]),
        "capabilities drop: [ALL]",
    );
    let added = capabilities_of(&ds)?;
    check(!added.is_empty(), "capabilities add: at least one");
    for cap in &added {
        check(
            !cap.starts_with("CAP_") && capability_number(cap).is_some(),
            &format!("capability {cap:?} is a Linux capability, named without CAP_"),
        );
    }
    check(
        added.iter().collect::<BTreeSet<_>>().len() == added.len(),
        "no capability added twice",
    );
    check(
        added == capabilities()?,
        "the rendered set is manifests/daemonset.yaml's (what the guest test runs with)",
    );

    // The host's filesystems, and the one writable directory.
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let volumes = pod.volumes.clone().unwrap_or_default();
    let host_mount = |path: &str| {
        let mount = mounts.iter().find(|m| m.mount_path == path)?;
        let volume = volumes.iter().find(|v| v.name == mount.name)?;
        let host = volume.host_path.as_ref()?;
        Some((
            host.path.clone(),
            mount.read_only == Some(true),
            mount.mount_propagation.clone(),
        ))
    };
    let bpffs = host_mount("/sys/fs/bpf");
    check(
        bpffs.as_ref().is_some_and(|(host, ro, propagation)| {
            host == "/sys/fs/bpf" && !ro && propagation.as_deref() != Some("Bidirectional")
        }),
        "bpffs: hostPath /sys/fs/bpf, writable, not Bidirectional (that needs privileged)",
    );
    check(
        host_mount("/sys/fs/cgroup").is_some_and(|(host, ro, _)| host == "/sys/fs/cgroup" && ro),
        "cgroupfs: hostPath /sys/fs/cgroup, read-only",
    );
    check(
        host_mount("/sys/kernel/security")
            .is_some_and(|(host, ro, _)| host == "/sys/kernel/security" && ro),
        "securityfs: hostPath /sys/kernel/security, read-only",
    );
    let status_dir = status_file.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    check(
        mounts
            .iter()
            .any(|m| m.mount_path == status_dir && m.read_only != Some(true)),
        "the status file's directory is a writable volume (the root filesystem is read-only)",
    );

    assert!(
        failures.is_empty(),
        "DaemonSet/palisade:\n  {}",
        failures.join("\n  ")
    );
    Ok(())
}
