//! `palisade load`: load the programs, pin their maps and attach them by
//! hand, without the daemon.

use std::path::{Path, PathBuf};

use aya::programs::XdpMode;
use clap::ValueEnum;
use palisade::{
    loader::{
        self, LsmObject,
        attach::{self, LinkState, TcHook},
        sizes::MapSizes,
    },
    netns::ifindex,
    paths::PinDir,
};

use crate::maybe_in_netns;

#[derive(clap::Args)]
pub struct Args {
    /// Interface for the XDP prefilter (repeatable).
    #[arg(long = "xdp", value_name = "IFACE")]
    xdp: Vec<String>,
    /// Pod host-side veth for both TC programs (repeatable).
    #[arg(long = "tc", value_name = "IFACE")]
    tc: Vec<String>,
    /// Pod host-side veth for the optional XDP egress hook plus the TC
    /// ingress hook (repeatable). TC is the default: see README.
    #[arg(long = "xdp-pod", value_name = "IFACE")]
    xdp_pod: Vec<String>,
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    xdp_mode: Mode,
    /// Network namespace the interfaces live in (e.g. /run/netns/node);
    /// pins stay on this process's bpffs.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
}

pub fn run(args: Args, pins: &PinDir, sizes: &MapSizes) -> anyhow::Result<()> {
    let targets = Targets {
        xdp: args.xdp,
        tc: args.tc,
        xdp_pod: args.xdp_pod,
        mode: args.xdp_mode,
    };
    load(pins, sizes, &targets, args.netns.as_deref())
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Native,
    Generic,
}

impl From<Mode> for XdpMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Auto => XdpMode::Default,
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        }
    }
}

fn describe(what: &str, iface: &str, state: &LinkState) {
    match state {
        LinkState::Pinned { path, replaced } => println!(
            "{what} on {iface}: {} link pinned at {}",
            if *replaced {
                "replaced program in existing"
            } else {
                "new"
            },
            path.display()
        ),
        LinkState::Filter { replaced } => println!(
            "{what} on {iface}: {} clsact filter (prio {}, handle {:#x}); kept by the qdisc",
            if *replaced {
                "replaced program in existing"
            } else {
                "new"
            },
            attach::CLSACT_PRIORITY,
            attach::CLSACT_HANDLE
        ),
    }
}

/// Where `load` attaches.
struct Targets {
    xdp: Vec<String>,
    tc: Vec<String>,
    xdp_pod: Vec<String>,
    mode: Mode,
}

fn load(
    pins: &PinDir,
    sizes: &MapSizes,
    targets: &Targets,
    netns: Option<&Path>,
) -> anyhow::Result<()> {
    let (features, mut loaded) = loader::load_probed(pins, sizes, loader::Programs::ALL)?;
    for (name, m) in [("xdp", &loaded.xdp.maps), ("tc", &loaded.tc.maps)] {
        for outcome in m {
            println!("{name}: map {} {:?}", outcome.name, outcome.pinned);
        }
    }
    match &mut loaded.lsm {
        LsmObject::Loaded(lsm) => {
            for state in attach::attach_lsm(lsm, pins)? {
                describe("lsm", "-", &state);
            }
        }
        LsmObject::Skipped { reason } => {
            println!("lsm: not loaded, no process or file enforcement: {reason}");
        }
    }
    let (xdp_object, tc_object) = (&mut loaded.xdp, &mut loaded.tc);
    maybe_in_netns(netns, || {
        for (iface, state) in
            loader::attach_prefilter(xdp_object, pins, &targets.xdp, targets.mode.into())?
        {
            describe("xdp", &iface, &state);
        }
        for iface in &targets.xdp_pod {
            let index = ifindex(iface)?;
            let state = attach::attach_xdp_from_pod(xdp_object, pins, index, targets.mode.into())?;
            describe("xdp FromPod", iface, &state);
            let state = attach::attach_tc(tc_object, pins, index, TcHook::ToPod, features.tcx)?;
            describe("tc ToPod", iface, &state);
        }
        for iface in &targets.tc {
            for hook in [TcHook::FromPod, TcHook::ToPod] {
                let state =
                    attach::attach_tc(tc_object, pins, ifindex(iface)?, hook, features.tcx)?;
                describe(&format!("tc {hook:?}"), iface, &state);
            }
        }
        Ok(())
    })?;
    for dir in attach::retire_other_abis(pins)? {
        println!(
            "retired {}: every link of that ABI was taken over",
            dir.display()
        );
    }
    Ok(())
}
