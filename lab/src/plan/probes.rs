//! The probe tables and checks of a scenario, planned: where each cell's
//! probe connects and which pod each check runs in.

use std::net::{IpAddr, SocketAddr};

use palisade::model::{NamedPort, Protocol, networkpolicy::PortRef, parse::ParseError};

use super::{PlannedCell, ProbePlan, Scenario};
use crate::{
    expect::{Cell, Expect, Expected},
    scenario::ProbeSpec,
};

impl Scenario {
    fn serves_name(&self, target: &str, name: &str) -> bool {
        match self.cluster.pods.iter().find(|p| p.key() == target) {
            Some(p) => p.ports.iter().any(|n| n.name == name),
            None => self
                .externals
                .iter()
                .any(|e| e.name == target && e.serve.iter().any(|n| n.name == name)),
        }
    }

    /// The address and port a probe reaches `target` at.
    pub(super) fn target(
        &self,
        target: &str,
        port: &PortRef,
        protocol: Protocol,
        family: u8,
    ) -> Result<SocketAddr, String> {
        let v6 = family == 6;
        let (ips, named): (Vec<IpAddr>, Vec<NamedPort>) =
            match self.cluster.pods.iter().find(|p| p.key() == target) {
                Some(p) => (p.ips.clone(), p.ports.clone()),
                None => {
                    let e = self
                        .externals
                        .iter()
                        .find(|e| e.name == target)
                        .ok_or_else(|| format!("no pod or external {target}"))?;
                    (vec![e.ip], e.serve.clone())
                }
            };
        let ip = ips
            .iter()
            .find(|ip| ip.is_ipv6() == v6)
            .ok_or_else(|| format!("{target} has no IPv{} address", family))?;
        let port = match port {
            PortRef::Number(n) => u16::try_from(*n)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port {n} is not 1-65535"))?,
            PortRef::Name(name) => {
                let p = named
                    .iter()
                    .find(|p| p.name == *name)
                    .ok_or_else(|| format!("{target} serves no port named {name}"))?;
                if p.protocol != protocol {
                    return Err(format!(
                        "{target}'s port {name} is {}, the probe is {}",
                        p.protocol, protocol
                    ));
                }
                p.port
            }
        };
        Ok(SocketAddr::new(*ip, port))
    }

    pub(super) fn plan_probes(
        &self,
        probes: &[ProbeSpec],
        at: &str,
    ) -> Result<Vec<ProbePlan>, ParseError> {
        let pods: Vec<String> = self.cluster.pods.iter().map(|p| p.key()).collect();
        let mut targets = pods.clone();
        targets.extend(self.externals.iter().map(|e| e.name.clone()));
        probes
            .iter()
            .enumerate()
            .map(|(i, probe)| self.plan_probe(probe, &format!("{at}[{i}]"), &pods, &targets))
            .collect()
    }

    /// One table: its cells in the order the expectation lists them, rows
    /// and columns in the order they first appear.
    fn plan_probe(
        &self,
        probe: &ProbeSpec,
        at: &str,
        pods: &[String],
        targets: &[String],
    ) -> Result<ProbePlan, ParseError> {
        if probe.family != 4 && probe.family != 6 {
            return Err(self.err(at, format!("family {} is not 4 or 6", probe.family)));
        }
        let expected = probe
            .expect
            .cells(pods, targets)
            .map_err(|e| self.err(at, e))?;
        let mut cells = Vec::new();
        let (mut rows, mut columns) = (Vec::new(), Vec::new());
        for e in expected {
            if !rows.contains(&e.from) {
                rows.push(e.from.clone());
            }
            if !columns.contains(&e.to) {
                columns.push(e.to.clone());
            }
            cells.push(self.plan_cell(probe, e, at)?);
        }
        let port = match &probe.port {
            PortRef::Number(n) => n.to_string(),
            PortRef::Name(n) => n.clone(),
        };
        Ok(ProbePlan {
            title: format!(
                "{} {port}{}",
                probe.protocol,
                if probe.family == 6 { " (IPv6)" } else { "" }
            ),
            protocol: probe.protocol,
            rows,
            columns,
            cells,
        })
    }

    /// One cell and where its probe connects; unchecked cells connect
    /// nowhere.
    fn plan_cell(
        &self,
        probe: &ProbeSpec,
        e: Expected,
        at: &str,
    ) -> Result<PlannedCell, ParseError> {
        // The `all:` form spans every target; where a named port
        // does not exist on one, that cell is simply not checked.
        let unnamed = matches!(probe.expect, Expect::All { .. })
            && matches!(&probe.port, PortRef::Name(n) if !self.serves_name(&e.to, n));
        let target = if e.cell == Cell::Unchecked || unnamed {
            None
        } else {
            let source = self.cluster.pods.iter().find(|p| p.key() == e.from);
            if !source.is_some_and(|p| p.ips.iter().any(|ip| ip.is_ipv6() == (probe.family == 6))) {
                return Err(self.err(at, format!("{} has no IPv{} address", e.from, probe.family)));
            }
            Some(
                self.target(&e.to, &probe.port, probe.protocol, probe.family)
                    .map_err(|m| self.err(at, format!("{} -> {}: {m}", e.from, e.to)))?,
            )
        };
        Ok(PlannedCell {
            from: e.from,
            to: e.to,
            expected: if unnamed { Cell::Unchecked } else { e.cell },
            target,
        })
    }
}
