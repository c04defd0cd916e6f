//! The lab's namespaces and pods as the Kubernetes objects the daemon's file
//! source reads (`v1 Namespace` with its annotations, `v1 Pod` with
//! container ports, pod IPs, its node as `spec.nodeName` where the lab
//! placed it, and its cgroup as the `palisade.dev/cgroup` annotation).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use palisade::{model::Snapshot, source::files::CGROUP_ANNOTATION};

/// One multi-document YAML text with every namespace and pod; `nodes`
/// names the node of each pod it knows (by pod key).
pub fn cluster_yaml(snapshot: &Snapshot, nodes: &BTreeMap<String, String>) -> String {
    let mut docs: Vec<Value> = Vec::new();
    for ns in snapshot.namespaces.values() {
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns.name, "labels": ns.labels, "annotations": ns.annotations},
        }));
    }
    for pod in &snapshot.pods {
        let ports: Vec<Value> = pod
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol}))
            .collect();
        let ips: Vec<Value> = pod.ips.iter().map(|ip| json!({"ip": ip})).collect();
        let mut spec = json!({"containers": [{"name": "main", "ports": ports}]});
        if let Some(node) = nodes.get(&pod.key()) {
            spec["nodeName"] = json!(node);
        }
        // Where its processes run, for process and file rules.
        let annotations: serde_json::Map<String, Value> = pod
            .cgroup
            .iter()
            .map(|c| (CGROUP_ANNOTATION.to_owned(), json!(c)))
            .collect();
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "labels": pod.labels,
                "annotations": annotations,
            },
            "spec": spec,
            "status": {"podIP": pod.ips.first(), "podIPs": ips},
        }));
    }
    docs.iter()
        .map(|d| palisade::model::yaml::to_string(d).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade::{source::Source as _, source::files::FileSource};

    use crate::scenario::ScenarioFile;

    #[test]
    fn the_file_source_reads_back_the_same_cluster() {
        let snapshot = ScenarioFile::parse(
            "name: t\nmodel: standard\npodCIDR6: fd00::/64\nnamespaces: {w: {labels: {team: blue}, annotations: {kubearmor-file-posture: block}}}\npods: [{namespace: w, name: d, labels: {app: d}}]\n",
            "t.yaml",
        )
        .unwrap()
        .snapshot("t.yaml")
        .unwrap();
        let mut snapshot = snapshot;
        std::sync::Arc::make_mut(&mut snapshot.pods[0]).cgroup =
            Some("/sys/fs/cgroup/palisade-lab1-0/x.a".into());
        assert_eq!(
            snapshot.namespaces["w"].annotations["kubearmor-file-posture"],
            "block"
        );
        let dir = std::env::temp_dir().join(format!("palisade-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let nodes = snapshot
            .pods
            .iter()
            .map(|p| (p.key(), "n1".to_owned()))
            .collect();
        std::fs::write(dir.join("cluster.yaml"), cluster_yaml(&snapshot, &nodes)).unwrap();
        let reading = FileSource::new(&dir).read();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(reading.errors.is_empty(), "{:?}", reading.errors);
        assert_eq!(reading.snapshot.namespaces, snapshot.namespaces);
        let mut pods = reading.snapshot.pods.clone();
        pods.sort_by_key(|p| p.key());
        let mut want = snapshot.pods.clone();
        want.sort_by_key(|p| p.key());
        assert_eq!(pods, want);
    }
}
