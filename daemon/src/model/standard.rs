//! The standard model of scenario files (`model: standard`): namespaces x,
//! y and z labelled `ns: <name>`, each with pods a, b and c labelled
//! `pod: <name>` that serve ports 80 and 81 on every protocol. The lab
//! builds scenario files' clusters from here; the compiler's tests use the
//! same cluster.

use std::net::{IpAddr, Ipv4Addr};

use super::{NamedPort, Namespace, Pod, Protocol, Snapshot};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

pub fn namespaces() -> impl Iterator<Item = Namespace> {
    NAMESPACES.into_iter().map(|ns| Namespace {
        name: ns.to_owned(),
        labels: [("ns".to_owned(), ns.to_owned())].into(),
        annotations: Default::default(),
    })
}

/// Every pod, in order x/a, x/b, ... z/c, without addresses.
pub fn pods() -> impl Iterator<Item = Pod> {
    NAMESPACES.into_iter().flat_map(|ns| {
        PODS.into_iter().map(move |pod| Pod {
            namespace: ns.to_owned(),
            name: pod.to_owned(),
            labels: [("pod".to_owned(), pod.to_owned())].into(),
            ips: Vec::new(),
            ports: ports(),
            cgroup: None,
            source_check: crate::model::SourceCheck::On,
            source_prefixes: crate::model::SourcePrefixes::None,
        })
    })
}

/// Ports 80 and 81 on TCP, UDP and SCTP, named `serve-<port>-<protocol>`.
fn ports() -> Vec<NamedPort> {
    let mut ports = Vec::new();
    for port in [80, 81] {
        for (protocol, name) in [
            (Protocol::Tcp, "tcp"),
            (Protocol::Udp, "udp"),
            (Protocol::Sctp, "sctp"),
        ] {
            ports.push(NamedPort {
                name: format!("serve-{port}-{name}"),
                port,
                protocol,
            });
        }
    }
    ports
}

/// The model with no policy, its pods at the addresses a scenario file's
/// default pod network gives them: 10.244.0.1 to 10.244.0.9 in pod order.
pub fn snapshot() -> Snapshot {
    Snapshot {
        namespaces: namespaces().map(|n| (n.name.clone(), n)).collect(),
        pods: pods()
            .zip(1..)
            .map(|(pod, host)| {
                Pod {
                    ips: vec![IpAddr::V4(Ipv4Addr::new(10, 244, 0, host))],
                    ..pod
                }
                .into()
            })
            .collect(),
        policies: Vec::new(),
    }
}
