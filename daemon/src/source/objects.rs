//! Pods and namespaces as both sources read them: the API's own types
//! (`k8s-openapi`), turned into the model's. Only what policy needs is
//! kept; the rest of an API object is ignored, so a pod or namespace is
//! read leniently whatever fields its version of Kubernetes adds.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1 as api;

use crate::model::{
    NamedPort, Namespace, Pod, Protocol, SourceCheck, SourcePrefixes,
    limits::MAX_SOURCE_PREFIXES_PER_POD,
};

pub type ApiPod = api::Pod;
pub type ApiNamespace = api::Namespace;

pub fn namespace(ns: &ApiNamespace) -> Namespace {
    Namespace {
        name: ns.metadata.name.clone().unwrap_or_default(),
        labels: ns.metadata.labels.clone().unwrap_or_default(),
        annotations: ns.metadata.annotations.clone().unwrap_or_default(),
    }
}

/// The pod's addresses, `status.podIP` first; unparsable ones are left out
/// (the API server validates them, a file may not).
pub fn pod_ips(pod: &ApiPod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().flatten().map(|p| &p.ip))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let mut seen = Vec::new();
    ips.retain(|ip| {
        let new = !seen.contains(ip);
        seen.push(*ip);
        new
    });
    ips
}

fn protocol(name: Option<&str>) -> Option<Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Named container ports, which NetworkPolicy ports may refer to.
pub fn named_ports(pod: &ApiPod) -> Vec<NamedPort> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                port: u16::try_from(p.container_port).ok()?,
                protocol: protocol(p.protocol.as_deref())?,
            })
        })
        .collect()
}

/// The annotation by which a pod opts out of the source check: `"off"`
/// lets its packets leave it from any address (a gateway or VPN pod that
/// forwards others' packets) on a node whose daemon honours it
/// (`--allow-source-check-opt-out`); `"on"` is the default.
pub const SOURCE_CHECK_ANNOTATION: &str = "palisade.dev/source-check";

/// What the pod's [`SOURCE_CHECK_ANNOTATION`] asks for.
pub fn source_check(annotations: Option<&BTreeMap<String, String>>) -> SourceCheck {
    match annotations.and_then(|a| a.get(SOURCE_CHECK_ANNOTATION)) {
        None => SourceCheck::On,
        Some(v) if v == "on" => SourceCheck::On,
        Some(v) if v == "off" => SourceCheck::Off,
        Some(v) => SourceCheck::Unreadable(v.clone()),
    }
}

/// The annotation by which a pod lists prefixes it may send from besides
/// its own addresses, comma-separated (`"10.8.0.0/24, fd00:8::/64"`): a VPN
/// or gateway pod that forwards some networks' packets, as Calico's
/// `allowedSourcePrefixes`. Honoured, as an opt-out is, only on a node
/// whose daemon runs with `--allow-source-check-opt-out`.
pub const SOURCE_PREFIXES_ANNOTATION: &str = "palisade.dev/source-prefixes";

/// What the pod's [`SOURCE_PREFIXES_ANNOTATION`] lists, at most
/// [`MAX_SOURCE_PREFIXES_PER_POD`]. A prefix with host bits set is refused
/// rather than widened (`10.8.0.1/16` may mean a typo in either half), and
/// an IPv4-mapped IPv6 one (`::ffff:0:0/96`) as one no packet can match:
/// the datapath drops such sources as malformed.
pub fn source_prefixes(annotations: Option<&BTreeMap<String, String>>) -> SourcePrefixes {
    let Some(value) = annotations.and_then(|a| a.get(SOURCE_PREFIXES_ANNOTATION)) else {
        return SourcePrefixes::None;
    };
    let mut list: Vec<ipnet::IpNet> = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Ok(net) = part.parse::<ipnet::IpNet>() else {
            return SourcePrefixes::Unreadable(format!("{part:?} is not a prefix (a CIDR)"));
        };
        if let ipnet::IpNet::V6(v6) = net
            && v6.prefix_len() >= 96
            && v6.network().to_ipv4_mapped().is_some()
        {
            return SourcePrefixes::Unreadable(format!(
                "{part:?} is IPv4-mapped: write the IPv4 prefix"
            ));
        }
        if net != net.trunc() {
            return SourcePrefixes::Unreadable(format!(
                "{part:?} has host bits set (the prefix would be {})",
                net.trunc()
            ));
        }
        if !list.contains(&net) {
            // Checked as the list grows: a long annotation costs no more.
            if list.len() == MAX_SOURCE_PREFIXES_PER_POD {
                return SourcePrefixes::Unreadable(format!(
                    "more than the {MAX_SOURCE_PREFIXES_PER_POD} prefixes a pod may list (MAX_SOURCE_PREFIXES_PER_POD)"
                ));
            }
            list.push(net);
        }
    }
    SourcePrefixes::List(list)
}

/// The model's pod; `cgroup` is the source's to find (an annotation in the
/// lab's files, the pod's uid and QoS class on a node). Its source check
/// is on: what it asks for is the source's to read ([`source_check`]),
/// on a node from the local pod's own object.
pub fn pod(p: &ApiPod, cgroup: Option<String>) -> Pod {
    Pod {
        namespace: p
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ips: pod_ips(p),
        ports: named_ports(p),
        cgroup,
        source_check: SourceCheck::On,
        source_prefixes: SourcePrefixes::None,
    }
}

/// A pod that has finished (Succeeded, Failed) has released its address;
/// the address may already be a new pod's.
pub fn finished(p: &ApiPod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub fn annotations(p: &ApiPod) -> BTreeMap<String, String> {
    p.metadata.annotations.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: &str) -> SourcePrefixes {
        let annotations = BTreeMap::from([(SOURCE_PREFIXES_ANNOTATION.to_owned(), value.into())]);
        source_prefixes(Some(&annotations))
    }

    #[test]
    fn source_prefixes_read_as_a_list_and_anything_else_is_unreadable() {
        assert_eq!(source_prefixes(None), SourcePrefixes::None);
        let nets =
            |s: &[&str]| SourcePrefixes::List(s.iter().map(|n| n.parse().unwrap()).collect());
        assert_eq!(
            read(" 10.8.0.0/24,fd00:8::/64 , 10.8.0.0/24,"),
            nets(&["10.8.0.0/24", "fd00:8::/64"]),
            "spaces, a repeat and a trailing comma"
        );
        assert_eq!(read(""), nets(&[]));
        let unreadable = |v: &str, why: &str| match read(v) {
            SourcePrefixes::Unreadable(e) => assert!(e.contains(why), "{v}: {e}"),
            other => panic!("{v}: {other:?}"),
        };
        unreadable("10.8.0.0", "is not a prefix");
        unreadable("10.8.0.0/24 fd00::/8", "is not a prefix");
        unreadable(
            "10.8.0.1/16",
            "host bits set (the prefix would be 10.8.0.0/16)",
        );
        let many: Vec<String> = (0..17).map(|i| format!("10.{i}.0.0/16")).collect();
        unreadable(&many.join(","), "more than the 16 prefixes");
        assert!(matches!(read(&many[..16].join(",")), SourcePrefixes::List(l) if l.len() == 16));
    }
}
