//! `palisade events`: the running daemon's drop and audit events.

use std::io::{BufRead as _, Write as _};

use palisade::observe::client;

use crate::endpoint::Endpoint;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    daemon: Endpoint,
    #[arg(long)]
    namespace: Option<String>,
    /// namespace/pod
    #[arg(long)]
    pod: Option<String>,
    /// dropped or audit (packets); block or audit (processes and files)
    #[arg(long)]
    verdict: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let q = client::query(&[
        ("namespace", args.namespace.as_deref()),
        ("pod", args.pod.as_deref()),
        ("verdict", args.verdict.as_deref()),
    ]);
    let reader = args.daemon.get(&format!("/events?{q}"))?;
    let stdout = std::io::stdout();
    for line in reader.lines() {
        let mut out = stdout.lock();
        writeln!(out, "{}", line?)?;
        out.flush()?;
    }
    Ok(())
}
