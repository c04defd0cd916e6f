//! `palisade unload`: detach everything Palisade attached, and with
//! `--maps` remove its pinned state.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use palisade::{loader::attach, netns::ifindex, paths::PinDir};

use crate::maybe_in_netns;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    maps: bool,
    /// Also remove Palisade's clsact filters from these interfaces
    /// (kernels without TCX, where TC attachments are not pinned, and
    /// veths a `--tc-filters-first` daemon had not yet moved to links).
    #[arg(long = "tc", value_name = "IFACE")]
    tc: Vec<String>,
    /// Network namespace of the --tc interfaces.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
}

pub fn run(args: &Args, pins: &PinDir) -> anyhow::Result<()> {
    unload(pins, args.maps, &args.tc, args.netns.as_deref())
}

fn unload(pins: &PinDir, maps: bool, tc: &[String], netns: Option<&Path>) -> anyhow::Result<()> {
    let removed = attach::unpin_links(pins)?;
    println!("unpinned {removed} links");
    maybe_in_netns(netns, || {
        for iface in tc {
            let filters = attach::detach_clsact(ifindex(iface)?)?;
            println!("removed {filters} clsact filters from {iface}");
        }
        Ok(())
    })?;
    if maps {
        match std::fs::remove_dir_all(pins.root()) {
            Ok(()) => println!("removed {}", pins.root().display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow!("removing {}: {e}", pins.root().display())),
        }
    }
    Ok(())
}
