//! The kinds the test API server knows, in one table: paths, list kinds,
//! watch bookmarks and field selectors are all derived from it, so a kind
//! is added by adding a row.

/// One served resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    /// API group, "" for the core group (served under `/api`).
    pub group: &'static str,
    pub version: &'static str,
    /// The plural, as in the path.
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Fields a field selector may name besides `metadata.name` and
    /// `metadata.namespace`; the real API server refuses the others with
    /// 400, and so does this one, so that a client asking for a field the
    /// real one does not index fails here too.
    pub fields: &'static [&'static str],
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "type",
];

const fn row(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group,
        version,
        plural,
        kind,
        namespaced,
        fields: &[],
    }
}

/// Everything served. Two `events` rows: core v1 and events.k8s.io/v1 are
/// separate collections here (the real server stores them once and
/// converts), which is enough for a client that writes through one and a
/// test that reads the same one back.
pub const RESOURCES: &[Resource] = &[
    Resource {
        fields: &["status.phase"],
        ..row("", "v1", "namespaces", "Namespace", false)
    },
    Resource {
        fields: POD_FIELDS,
        ..row("", "v1", "pods", "Pod", true)
    },
    Resource {
        fields: EVENT_FIELDS,
        ..row("", "v1", "events", "Event", true)
    },
    row("", "v1", "configmaps", "ConfigMap", true),
    row("events.k8s.io", "v1", "events", "Event", true),
    row(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
    row(
        "palisade.dev",
        "v1alpha1",
        "palisadenetworkpolicies",
        "PalisadeNetworkPolicy",
        true,
    ),
    row(
        "palisade.dev",
        "v1alpha1",
        "palisadeclusternetworkpolicies",
        "PalisadeClusterNetworkPolicy",
        false,
    ),
    row(
        "security.kubearmor.com",
        "v1",
        "kubearmorpolicies",
        "KubeArmorPolicy",
        true,
    ),
];

impl Resource {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The row a request path names.
    pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The row an object's `apiVersion` and `kind` name.
    pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
    }

    /// What a message calls it: `pods`, `networkpolicies.networking.k8s.io`.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub(crate) fn allows_field(&self, field: &str) -> bool {
        field == "metadata.name" || field == "metadata.namespace" || self.fields.contains(&field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_found_by_path_and_by_kind() {
        let pods = Resource::by_path("", "v1", "pods");
        assert_eq!(pods.map(|r| r.kind), Some("Pod"));
        assert_eq!(Resource::by_kind("v1", "Pod"), pods);
        let cnp = Resource::by_kind("palisade.dev/v1alpha1", "PalisadeClusterNetworkPolicy");
        assert_eq!(cnp.map(|r| r.namespaced), Some(false));
        assert_eq!(
            cnp.map(Resource::api_version).as_deref(),
            Some("palisade.dev/v1alpha1")
        );
        assert!(Resource::by_kind("v1", "NetworkPolicy").is_none());
        assert!(Resource::by_path("apps", "v1", "deployments").is_none());
        assert_eq!(
            Resource::by_kind("events.k8s.io/v1", "Event").map(|r| r.group),
            Some("events.k8s.io")
        );
    }

    #[test]
    fn every_row_is_one_of_a_kind() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(
                    (a.group, a.version, a.plural) != (b.group, b.version, b.plural),
                    "{a:?} twice"
                );
                assert!(
                    (a.group, a.version, a.kind) != (b.group, b.version, b.kind),
                    "{a:?} twice"
                );
            }
        }
    }
}
