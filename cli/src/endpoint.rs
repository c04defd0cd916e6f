//! The running daemon's local endpoint, as `palisade events` and
//! `palisade explain` reach it.

use std::{net::SocketAddr, path::PathBuf};

use palisade::observe::client;

#[derive(clap::Args)]
pub struct Endpoint {
    /// The running daemon's loopback endpoint (its --api-addr; or its
    /// --metrics-addr when that is on loopback).
    #[arg(long, default_value = "127.0.0.1:9964")]
    addr: SocketAddr,
    /// Connect from inside this network namespace (e.g. /proc/PID/ns/net
    /// of the daemon).
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
}

impl Endpoint {
    /// GET `path` (with its query) from the daemon.
    pub fn get(&self, path: &str) -> anyhow::Result<std::io::BufReader<client::Body>> {
        client::get(self.addr, self.netns.as_deref(), path)
    }
}
