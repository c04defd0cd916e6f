//! `palisade explain`: why a flow is allowed or denied, or a process or
//! file operation allowed or blocked, from a scenario file or from what
//! the running daemon enforces now.

use std::path::PathBuf;

use anyhow::anyhow;
use palisade::{
    model::Snapshot,
    observe::{
        client,
        explain_lsm::{Operation, explain_lsm},
    },
};

use crate::endpoint::Endpoint;

#[derive(clap::Args)]
pub struct Args {
    /// A scenario file (docs/SCENARIOS.md format); without one, ask
    /// the running daemon at --addr what it enforces now.
    file: Option<PathBuf>,
    // The running daemon (without FILE).
    #[command(flatten)]
    daemon: Endpoint,
    /// A flow's source: namespace/pod, or an address. With --pod: the
    /// executable of the process doing the operation (fromSource rules).
    #[arg(long)]
    from: Option<String>,
    /// A flow's destination: namespace/pod, or an address.
    #[arg(long, conflicts_with = "pod")]
    to: Option<String>,
    /// A port number, or a port name resolved on the destination pod.
    #[arg(long, conflicts_with = "pod")]
    port: Option<String>,
    /// A process or file operation in this pod (namespace/pod) instead of
    /// a flow: give one of --exec, --read, --write.
    #[arg(long)]
    pod: Option<String>,
    /// The program executed.
    #[arg(long, requires = "pod", group = "operation")]
    exec: Option<String>,
    /// The file opened for reading; a directory, ending in '/', listed.
    #[arg(long, requires = "pod", group = "operation")]
    read: Option<String>,
    /// The file opened for writing (or unlinked, renamed, linked,
    /// truncated, its mode or owner changed, created or removed); a
    /// directory itself, ending in '/', renamed, removed, made or changed.
    #[arg(long, requires = "pod", group = "operation")]
    write: Option<String>,
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// The flow's address family, 4 or 6 (default: that of an address
    /// given as --from or --to, else of the source pod's first address).
    #[arg(long, value_parser = ["4", "6"])]
    family: Option<String>,
}

/// The process or file operation asked about, if any.
fn operation(args: &Args) -> anyhow::Result<Option<(&str, Operation, &str)>> {
    let Some(pod) = &args.pod else {
        return Ok(None);
    };
    let (op, path) = match (&args.exec, &args.read, &args.write) {
        (Some(p), None, None) => (Operation::Exec, p),
        (None, Some(p), None) => (Operation::Read, p),
        (None, None, Some(p)) => (Operation::Write, p),
        _ => return Err(anyhow!("with --pod, give one of --exec, --read, --write")),
    };
    Ok(Some((pod, op, path)))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let asked = operation(args)?;
    let flow = || -> anyhow::Result<(&str, &str, &str)> {
        match (&args.from, &args.to, &args.port) {
            (Some(f), Some(t), Some(p)) => Ok((f, t, p)),
            _ => Err(anyhow!(
                "give --from, --to and --port for a flow, or --pod with --exec, --read or --write"
            )),
        }
    };
    let text = match &args.file {
        Some(file) => {
            let shown = file.display().to_string();
            let snapshot = scenario_snapshot(file)?;
            match asked {
                Some((pod, op, path)) => {
                    explain_lsm(&snapshot, pod, op, path, args.from.as_deref()).map(|(_, t)| t)
                }
                None => {
                    let (from, to, port) = flow()?;
                    palisade::observe::explain::explain_text(
                        &snapshot,
                        from,
                        to,
                        port,
                        &args.protocol,
                        args.family.as_deref(),
                    )
                }
            }
            .map_err(|e| anyhow!("{shown}: {e}"))?
        }
        None => {
            let q = match asked {
                Some((pod, op, path)) => client::query(&[
                    ("pod", Some(pod)),
                    (op.name(), Some(path)),
                    ("from", args.from.as_deref()),
                ]),
                None => {
                    let (from, to, port) = flow()?;
                    client::query(&[
                        ("from", Some(from)),
                        ("to", Some(to)),
                        ("port", Some(port)),
                        ("protocol", Some(args.protocol.as_str())),
                        ("family", args.family.as_deref()),
                    ])
                }
            };
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
