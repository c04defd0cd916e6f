//! A scenario's nodes as the lab builds them: each a [`Topology`] of its
//! own (node namespace, bridge, pods). A file without `nodes:` has one node
//! whose uplink leads to the externals, as before the extension; with
//! `nodes:`, the [`Underlay`] connects the nodes and holds the externals.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context as _;
use palisade::model::Snapshot;

use crate::{
    netns::Netns,
    plan::Scenario,
    topology::{Plan, PodNet, Topology},
    underlay::{self, Member, Underlay},
};

pub struct Node {
    /// As in the scenario: the daemon's `--node-name`.
    pub name: String,
    /// Names the node's namespaces, cgroups, pins and daemon directory.
    pub tag: String,
    pub topology: Topology,
}

pub struct Nodes {
    pub nodes: Vec<Node>,
    /// With `nodes:`: the network between them, and the outside.
    underlay: Option<Underlay>,
}

impl Nodes {
    /// Every node of `scenario` with the pods it starts with; `tag` tells
    /// this run's namespaces, cgroups and pins apart from others'.
    pub async fn build(tag: &str, scenario: &Scenario) -> anyhow::Result<Self> {
        let externals: Vec<IpAddr> = scenario.externals.iter().map(|e| e.ip).collect();
        let mut nodes = Vec::new();
        for (i, node) in scenario.nodes.iter().enumerate() {
            let node_tag = if scenario.declares_nodes {
                format!("{tag}-{}", node.name)
            } else {
                tag.to_owned()
            };
            let plan = Plan {
                tag: &node_tag,
                networks: node.networks.clone(),
                pods: scenario
                    .cluster
                    .pods
                    .iter()
                    .filter(|p| scenario.node_of.get(&p.key()) == Some(&i))
                    .map(|p| (p.key(), p.ips.clone()))
                    .collect(),
                // With `nodes:` the externals sit on the underlay instead.
                externals: if scenario.declares_nodes {
                    Vec::new()
                } else {
                    externals.clone()
                },
            };
            let topology = Topology::build(&plan)
                .await
                .with_context(|| format!("building node {}", node.name))?;
            nodes.push(Node {
                name: node.name.clone(),
                tag: node_tag,
                topology,
            });
        }
        let underlay = if scenario.declares_nodes {
            let members: Vec<Member> = nodes
                .iter()
                .zip(&scenario.nodes)
                .map(|(n, spec)| Member {
                    netns: &n.topology.node,
                    networks: &spec.networks,
                })
                .collect();
            Some(
                Underlay::build(tag, &members, &externals)
                    .await
                    .context("building the underlay between the nodes")?,
            )
        } else {
            None
        };
        Ok(Self { nodes, underlay })
    }

    /// A pod's namespace, veth and cgroup, on whichever node it runs.
    pub fn pod(&self, key: &str) -> anyhow::Result<&PodNet> {
        self.nodes
            .iter()
            .find_map(|n| n.topology.pods.get(key))
            .with_context(|| format!("no pod {key} on any node"))
    }

    /// Adds a pod to node `node` (an index), as a CNI would.
    pub async fn add_pod(&mut self, node: usize, key: &str, ips: &[IpAddr]) -> anyhow::Result<()> {
        self.nodes
            .get_mut(node)
            .with_context(|| format!("no node {node}"))?
            .topology
            .add_pod(key, ips)
            .await
    }

    /// Where the externals live.
    pub fn outside(&self) -> Option<&Netns> {
        match &self.underlay {
            Some(u) => Some(&u.netns),
            None => self.nodes.first()?.topology.outside.as_ref(),
        }
    }

    /// Where the test API server listens so that every node's daemon
    /// reaches it: the one node's loopback, or the outside's address on
    /// the underlay.
    pub fn api_server_at(&self) -> anyhow::Result<(&Netns, IpAddr)> {
        match &self.underlay {
            Some(u) => Ok((&u.netns, underlay::outside_address(false))),
            None => Ok((
                &self.nodes.first().context("no node")?.topology.node,
                Ipv4Addr::LOCALHOST.into(),
            )),
        }
    }

    /// `cluster` with every pod's cgroup (see [`Topology::with_cgroups`]).
    pub fn with_cgroups(&self, cluster: &Snapshot) -> Snapshot {
        self.nodes
            .iter()
            .fold(cluster.clone(), |c, n| n.topology.with_cgroups(&c))
    }

    /// The file declares `nodes:`.
    pub fn declared(&self) -> bool {
        self.underlay.is_some()
    }
}
