//! The `palisade` command: one module per subcommand. The lab is linked in
//! with the `lab` feature (on by default); a node image can leave it out.

mod crds;
mod daemon;
mod endpoint;
mod events;
mod explain;
mod lab;
mod load;
mod status;
mod unload;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use palisade::{
    loader::sizes::MapSizes,
    paths::{self, PinDir},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "eBPF policy enforcement for Kubernetes nodes"
)]
struct Cli {
    /// Base directory for pins on bpffs; the ABI version directory goes beneath it.
    #[arg(long, global = true, default_value = paths::DEFAULT_PIN_BASE)]
    pin_base: PathBuf,
    /// Size of a map, e.g. PAL_CT4=262144 (repeatable). A pinned map of
    /// another size is refused: `unload --maps` first to resize.
    #[arg(long = "map-size", global = true, value_name = "NAME=ENTRIES")]
    map_size: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe kernel features and show what is pinned, with counters.
    Status(status::Args),
    /// Load all programs (LSM only where BPF LSM is active), pin their maps,
    /// attach to the given interfaces and pin the links. Enforcement stays
    /// in place after this command exits.
    Load(load::Args),
    /// Explain why a flow would be allowed or denied, from a scenario file's
    /// namespaces, pods and policies.
    Explain(explain::Args),
    /// Run the node daemon: load (or adopt) the programs, then keep the maps
    /// in step with the source, attaching to each local pod's veth. Run it in
    /// the node's network namespace. Enforcement outlives it.
    Daemon(daemon::Args),
    /// The lab: scenario files (docs/SCENARIOS.md) against the real
    /// daemon on a simulated node (needs root).
    #[cfg_attr(not(feature = "lab"), command(hide = true))]
    Lab(lab::Args),
    /// Stream drop and audit events from a running daemon as JSON lines
    /// (like `hubble observe`); lines of type "lost" carry the kernel's
    /// counts of events the rate limit or a full ring kept back.
    Events(events::Args),
    /// Write the CustomResourceDefinitions of Palisade's own kinds,
    /// generated from their Rust types, into a directory.
    Crds(crds::Args),
    /// Unpin all links (detaching the programs); with --maps also remove the
    /// pinned maps, losing their counters and state.
    Unload(unload::Args),
}

/// Runs `f` in `netns` when one is given, here otherwise.
fn maybe_in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    match netns {
        Some(path) => palisade::netns::in_netns(path, f)?,
        None => f(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let pins = PinDir::new(&cli.pin_base);
    let mut sizes = MapSizes::default();
    for arg in &cli.map_size {
        sizes.set(arg)?;
    }
    match cli.command {
        Command::Status(args) => status::run(&args, &pins, &sizes),
        Command::Load(args) => load::run(args, &pins, &sizes),
        Command::Unload(args) => unload::run(&args, &pins),
        Command::Explain(args) => explain::run(&args),
        Command::Daemon(args) => daemon::run(args, &pins, &sizes),
        Command::Lab(_) => unreachable!("main runs the lab"),
        Command::Events(args) => events::run(&args),
        Command::Crds(args) => crds::run(&args),
    }
}

fn main() -> ExitCode {
    // The daemon's TC filter helper, a child it started, and the lab's
    // check helper open nothing before their work.
    if let Some(code) = palisade::loader::filter_helper::main() {
        return ExitCode::from(code);
    }
    if let Some(code) = lab::check_helper() {
        return code;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PALISADE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Lab(args) = &cli.command {
        return lab::run(args);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::FAILURE
        }
    }
}
