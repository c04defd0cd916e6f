//! `palisade unload`: detach everything Palisade attached, and with
//! `--maps` remove its pinned state.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use palisade::{
    loader::attach,
    netns::{ifindex, ifname},
    node::discover,
    paths::PinDir,
};

use crate::maybe_in_netns;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    maps: bool,
    /// Remove Palisade's clsact filters from these interfaces only. By
    /// default every interface of the namespace that has one is found by
    /// a filter dump (kernels without TCX, where TC attachments are not
    /// pinned, and veths a daemon had not yet moved from filters to
    /// links).
    #[arg(long = "tc", value_name = "IFACE")]
    tc: Vec<String>,
    /// Network namespace of the interfaces whose filters go.
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
        let interfaces = if tc.is_empty() {
            filtered_interfaces()?
        } else {
            tc.iter()
                .map(|iface| Ok(ifindex(iface)?))
                .collect::<anyhow::Result<_>>()?
        };
        for index in interfaces {
            let filters = attach::detach_clsact(index)?;
            // A veth can go between the dump and here: its index then names it.
            let name = ifname(index).unwrap_or_else(|_| format!("ifindex {index}"));
            println!("removed {filters} clsact filters from {name}");
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

/// The interfaces of the calling thread's namespace that hold a Palisade
/// clsact filter.
pub(crate) fn filtered_interfaces() -> anyhow::Result<Vec<u32>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let netlink = discover::connect().context("netlink")?;
        let found = discover::palisade_filters(&netlink)
            .await
            .context("looking for Palisade's clsact filters")?;
        Ok(found.into_iter().collect())
    })
}
