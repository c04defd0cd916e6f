//! The cluster part of a scenario file (shared/SCENARIOS.md): namespaces,
//! pods, externals and policies, turned into a [`Snapshot`]. Steps, probes
//! and checks are accepted here and run by the lab.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use serde::Deserialize;

use super::{NamedPort, Namespace, Pod, Protocol, Snapshot, parse::ParseError, selector::Labels};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDR6")]
    pub pod_cidr6: Option<String>,
    #[serde(default)]
    pub namespaces: BTreeMap<String, NamespaceSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub externals: Vec<External>,
    #[serde(default)]
    pub policies: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub steps: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub probes: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub checks: Vec<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Option<Labels>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default)]
    pub serve: Vec<Serve>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serve {
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    pub name: String,
    pub ip: IpAddr,
    #[serde(default)]
    pub serve: Vec<Serve>,
}

/// The standard model's pods serve 80 and 81 on every protocol.
fn standard_ports() -> Vec<NamedPort> {
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

fn error(file: &str, message: String) -> ParseError {
    ParseError {
        file: file.to_owned(),
        line: 1,
        object: None,
        message,
    }
}

impl ScenarioFile {
    pub fn parse(text: &str, file: &str) -> Result<Self, ParseError> {
        serde_yaml::from_str(text).map_err(|e| ParseError {
            file: file.to_owned(),
            line: e.location().map_or(1, |l| l.line()),
            object: None,
            message: e.to_string(),
        })
    }

    /// The cluster the file describes, with every policy parsed and validated.
    pub fn snapshot(&self, file: &str) -> Result<Snapshot, ParseError> {
        let mut s = Snapshot::default();
        let mut pods: Vec<(Pod, bool)> = Vec::new();
        if let Some(model) = &self.model {
            if model != "standard" {
                return Err(error(
                    file,
                    format!("unknown model {model:?}: the only model is \"standard\""),
                ));
            }
            for ns in ["x", "y", "z"] {
                s.namespaces.insert(
                    ns.to_owned(),
                    Namespace {
                        name: ns.to_owned(),
                        labels: [("ns".to_owned(), ns.to_owned())].into(),
                    },
                );
                for pod in ["a", "b", "c"] {
                    pods.push((
                        Pod {
                            namespace: ns.to_owned(),
                            name: pod.to_owned(),
                            labels: [("pod".to_owned(), pod.to_owned())].into(),
                            ips: Vec::new(),
                            ports: standard_ports(),
                        },
                        false,
                    ));
                }
            }
        }
        for (name, spec) in &self.namespaces {
            s.namespaces.insert(
                name.clone(),
                Namespace {
                    name: name.clone(),
                    labels: spec.labels.clone(),
                },
            );
        }
        for spec in &self.pods {
            if !s.namespaces.contains_key(&spec.namespace) {
                return Err(error(
                    file,
                    format!(
                        "pod {}/{}: namespace {} is not defined",
                        spec.namespace, spec.name, spec.namespace
                    ),
                ));
            }
            let ports = spec
                .serve
                .iter()
                .filter_map(|p| {
                    Some(NamedPort {
                        name: p.name.clone()?,
                        port: p.port,
                        protocol: p.protocol,
                    })
                })
                .collect();
            let mut ips: Vec<IpAddr> = spec.ip.map(IpAddr::V4).into_iter().collect();
            ips.extend(spec.ip6.map(IpAddr::V6));
            match pods
                .iter_mut()
                .find(|(p, _)| p.namespace == spec.namespace && p.name == spec.name)
            {
                // A model pod with only addresses pins them.
                Some((pod, pinned)) => {
                    pod.ips = ips;
                    *pinned = true;
                    if let Some(labels) = &spec.labels {
                        pod.labels = labels.clone();
                    }
                }
                None => pods.push((
                    Pod {
                        namespace: spec.namespace.clone(),
                        name: spec.name.clone(),
                        labels: spec.labels.clone().unwrap_or_default(),
                        ips,
                        ports,
                    },
                    false,
                )),
            }
        }
        self.assign_addresses(&mut pods, file)?;
        s.pods = pods.into_iter().map(|(p, _)| p).collect();
        for (i, value) in self.policies.iter().enumerate() {
            let text = serde_yaml::to_string(value).map_err(|e| error(file, e.to_string()))?;
            for doc in
                super::parse::parse_documents(&text, &format!("{file}: policies[{i}]"), "default")
            {
                s.policies.push(doc?.policy());
            }
        }
        Ok(s)
    }

    /// Pods without `ip` get addresses from the pod CIDR in file order.
    fn assign_addresses(&self, pods: &mut [(Pod, bool)], file: &str) -> Result<(), ParseError> {
        let cidr: IpNet = self
            .pod_cidr
            .as_deref()
            .unwrap_or("10.244.0.0/16")
            .parse()
            .map_err(|_| error(file, format!("podCIDR {:?} is not a CIDR", self.pod_cidr)))?;
        let taken: Vec<IpAddr> = pods.iter().flat_map(|(p, _)| p.ips.clone()).collect();
        let mut free = cidr.hosts().filter(|ip| !taken.contains(ip));
        for (pod, _) in pods
            .iter_mut()
            .filter(|(p, _)| !p.ips.iter().any(IpAddr::is_ipv4))
        {
            let ip = free.next().ok_or_else(|| {
                error(
                    file,
                    format!("podCIDR {cidr} has no address left for {}", pod.key()),
                )
            })?;
            pod.ips.insert(0, ip);
        }
        Ok(())
    }
}
