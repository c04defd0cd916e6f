//! `palisade explain`: why a flow is allowed or denied, from a scenario
//! file or from what the running daemon enforces now.

use std::path::PathBuf;

use anyhow::anyhow;
use palisade::{model::Snapshot, observe::client};

use crate::endpoint::Endpoint;

#[derive(clap::Args)]
pub struct Args {
    /// A scenario file (docs/SCENARIOS.md format); without one, ask
    /// the running daemon at --addr what it enforces now.
    file: Option<PathBuf>,
    // The running daemon (without FILE).
    #[command(flatten)]
    daemon: Endpoint,
    /// Source: namespace/pod, or an address.
    #[arg(long)]
    from: String,
    /// Destination: namespace/pod, or an address.
    #[arg(long)]
    to: String,
    /// A port number, or a port name resolved on the destination pod.
    #[arg(long)]
    port: String,
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// The flow's address family, 4 or 6 (default: that of an address
    /// given as --from or --to, else of the source pod's first address).
    #[arg(long, value_parser = ["4", "6"])]
    family: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let text = match &args.file {
        Some(file) => {
            let shown = file.display().to_string();
            let snapshot = scenario_snapshot(file)?;
            palisade::observe::explain::explain_text(
                &snapshot,
                &args.from,
                &args.to,
                &args.port,
                &args.protocol,
                args.family.as_deref(),
            )
            .map_err(|e| anyhow!("{shown}: {e}"))?
        }
        None => {
            let q = client::query(&[
                ("from", Some(args.from.as_str())),
                ("to", Some(args.to.as_str())),
                ("port", Some(args.port.as_str())),
                ("protocol", Some(args.protocol.as_str())),
                ("family", args.family.as_deref()),
            ]);
            let mut reader = args.daemon.get(&format!("/explain?{q}"))?;
            let mut text = String::new();
            std::io::Read::read_to_string(&mut reader, &mut text)?;
            text
        }
    };
    print!("{text}");
    Ok(())
}

/// The cluster of a scenario file: the lab owns that format.
#[cfg(feature = "lab")]
fn scenario_snapshot(file: &std::path::Path) -> anyhow::Result<Snapshot> {
    use anyhow::Context as _;
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {shown}"))?;
    Ok(palisade_lab::scenario::ScenarioFile::parse(&text, &shown)?.snapshot(&shown)?)
}

#[cfg(not(feature = "lab"))]
fn scenario_snapshot(file: &std::path::Path) -> anyhow::Result<Snapshot> {
    Err(anyhow!(
        "{}: scenario files are the lab's format, and this palisade was built without the lab; \
         leave out FILE to ask the running daemon",
        file.display()
    ))
}
