//! `palisade status`: what the kernel offers and what Palisade holds in it.
//! (The daemon's own status file is `node::agent::Status`.)

use std::{collections::BTreeMap, fs, path::PathBuf};

use ebpf_common::{ABI_VERSION, maps::SPECS};
use palisade::{
    loader::features::Features,
    loader::{
        attach,
        layout::{self, Pinned},
        sizes::MapSizes,
    },
    observe::{
        programs,
        stats::{self, CounterRow},
    },
    paths::PinDir,
};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args, pins: &PinDir, sizes: &MapSizes) -> anyhow::Result<()> {
    let report = Report::gather(pins, Features::probe(), sizes);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// What `palisade status` shows.
#[derive(Debug, Serialize)]
pub struct Report {
    pub abi: u32,
    pub pin_dir: PathBuf,
    pub features: Features,
    pub maps: Vec<MapReport>,
    pub links: Vec<String>,
    /// Interfaces of this network namespace with a clsact filter of
    /// Palisade's (`NAME (ifindex N)`): veths a daemon had not yet moved
    /// to links, or every veth without TCX. Enforcing as links do, but not
    /// pinned.
    pub tc_filters: Vec<String>,
    /// Why `tc_filters` could not be listed, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tc_filters_unknown: Option<String>,
    /// By LSM program, as in the daemon's status file: the runs of it the
    /// kernel skipped (each an operation that passed unjudged). Here every
    /// linked program is listed, those with none too.
    pub lsm_runs_skipped: BTreeMap<&'static str, u64>,
    /// By LSM program: why its skipped runs could not be read.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lsm_runs_skipped_unknown: BTreeMap<&'static str, String>,
}

#[derive(Debug, Serialize)]
pub struct MapReport {
    pub name: &'static str,
    /// `absent`, `ok`, or the layout error.
    pub state: String,
    pub counters: Vec<CounterRow>,
}

impl Report {
    pub fn gather(pins: &PinDir, features: Features, sizes: &MapSizes) -> Self {
        let maps = SPECS
            .iter()
            .map(|spec| {
                let path = pins.map(spec.name);
                // Only the stats maps hold `Counter`s; other per-CPU arrays
                // (the counter cells) have layouts of their own.
                let is_stats = ebpf_common::maps::STATS.contains(&spec.name);
                let (state, counters) = match layout::check_pinned(&path, &sizes.apply(spec)) {
                    Ok(Pinned::Absent) => ("absent".to_owned(), Vec::new()),
                    Ok(Pinned::Matches { id }) if is_stats => match stats::read_pinned(&path) {
                        Ok(rows) => (format!("ok (id {id})"), rows),
                        Err(e) => (format!("unreadable: {e}"), Vec::new()),
                    },
                    Ok(Pinned::Matches { id }) => (
                        format!("ok (id {id}, {} entries max)", sizes.entries(spec)),
                        Vec::new(),
                    ),
                    Err(e) => (e.to_string(), Vec::new()),
                };
                MapReport {
                    name: spec.name,
                    state,
                    counters,
                }
            })
            .collect();
        let mut links: Vec<String> = fs::read_dir(pins.links())
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        links.sort();
        let tc_filters = crate::unload::filtered_interfaces()
            .map(|found| {
                found
                    .into_iter()
                    .map(|i| match palisade::netns::ifname(i) {
                        Ok(name) => format!("{name} (ifindex {i})"),
                        Err(_) => format!("ifindex {i}"),
                    })
                    .collect()
            })
            .map_err(|e| format!("{e:#}"));
        let (tc_filters, tc_filters_unknown) = match tc_filters {
            Ok(found) => (found, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let (mut lsm_runs_skipped, mut lsm_runs_skipped_unknown) =
            (BTreeMap::new(), BTreeMap::new());
        for (program, n) in programs::pinned_runs_skipped(pins) {
            match n {
                Ok(n) => {
                    lsm_runs_skipped.insert(program, n);
                }
                Err(e) => {
                    lsm_runs_skipped_unknown.insert(program, e.to_string());
                }
            }
        }
        Self {
            abi: ABI_VERSION,
            pin_dir: pins.root().to_path_buf(),
            features,
            maps,
            links,
            tc_filters,
            tc_filters_unknown,
            lsm_runs_skipped,
            lsm_runs_skipped_unknown,
        }
    }

    /// What `palisade status` says beside an LSM link of its runs skipped.
    fn runs_skipped_text(&self, link: &str) -> Option<String> {
        let of_link = |program: &&str| attach::lsm_link(program) == link;
        if let Some((_, n)) = self.lsm_runs_skipped.iter().find(|(p, _)| of_link(p)) {
            return Some(n.to_string());
        }
        self.lsm_runs_skipped_unknown
            .iter()
            .find(|(p, _)| of_link(p))
            .map(|(_, e)| format!("not known: {e}"))
    }

    pub fn render(&self) -> String {
        let mut out = String::from("kernel features\n");
        for line in self.features.lines() {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(&format!(
            "pinned state (ABI v{}, {})\n",
            self.abi,
            self.pin_dir.display()
        ));
        for m in &self.maps {
            out.push_str(&format!("  map {:<15} {}\n", m.name, m.state));
            for c in &m.counters {
                out.push_str(&format!(
                    "    {:<8} {:<16} {} events, {} bytes\n",
                    c.direction, c.reason, c.events, c.bytes
                ));
            }
        }
        if self.links.is_empty() {
            out.push_str("  no pinned links\n");
        }
        for l in &self.links {
            match self.runs_skipped_text(l) {
                Some(n) => out.push_str(&format!("  link {l} (runs the kernel skipped: {n})\n")),
                None => out.push_str(&format!("  link {l}\n")),
            }
        }
        if let Some(e) = &self.tc_filters_unknown {
            out.push_str(&format!("  clsact filters not listed: {e}\n"));
        } else if self.tc_filters.is_empty() {
            out.push_str("  no clsact filters of Palisade's\n");
        }
        for f in &self.tc_filters {
            out.push_str(&format!(
                "  clsact filters on {f} (not pinned; kept by the qdisc)\n"
            ));
        }
        out
    }
}
