//! Real listeners in the pods and externals: TCP and SCTP accept and echo,
//! UDP echoes each request. Each socket is made inside its
//! namespace (a socket keeps the namespace it was made in) and then served
//! by tasks on the runner's runtime; aborting the tasks closes them.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use socket2::{Domain, Protocol as SockProtocol, SockAddr, Socket, Type};
use tokio::task::JoinHandle;

use palisade::model::Protocol;

use crate::netns::Netns;

pub const SCTP: i32 = 132;

/// The kernel refuses SCTP sockets (no `sctp` module).
pub fn no_sctp(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT | libc::EAFNOSUPPORT)
    )
}

pub fn socket(addr: &SocketAddr, protocol: Protocol) -> io::Result<Socket> {
    let domain = Domain::for_address(*addr);
    let socket = match protocol {
        Protocol::Tcp => Socket::new(domain, Type::STREAM, Some(SockProtocol::TCP))?,
        Protocol::Udp => Socket::new(domain, Type::DGRAM, Some(SockProtocol::UDP))?,
        Protocol::Sctp => Socket::new(domain, Type::STREAM, Some(SockProtocol::from(SCTP)))?,
    };
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn bind(addr: SocketAddr, protocol: Protocol) -> io::Result<Socket> {
    let socket = socket(&addr, protocol)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    if protocol != Protocol::Udp {
        socket.listen(128)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The listeners of one scenario; dropped, they close.
#[derive(Default)]
pub struct Listeners {
    tasks: Vec<JoinHandle<()>>,
}

impl Listeners {
    /// Serves `port`/`protocol` on `ips` (or the wildcard of each family
    /// present when `ips` are a pod's own addresses) inside `netns`.
    pub fn serve(
        &mut self,
        netns: &Netns,
        ips: &[IpAddr],
        wildcard: bool,
        port: u16,
        protocol: Protocol,
    ) -> anyhow::Result<()> {
        let mut addrs: Vec<IpAddr> = if wildcard {
            let mut v = Vec::new();
            if ips.iter().any(IpAddr::is_ipv4) {
                v.push(Ipv4Addr::UNSPECIFIED.into());
            }
            if ips.iter().any(IpAddr::is_ipv6) {
                v.push(Ipv6Addr::UNSPECIFIED.into());
            }
            v
        } else {
            ips.to_vec()
        };
        addrs.dedup();
        for ip in addrs {
            let addr = SocketAddr::new(ip, port);
            let socket = match netns.run(|| bind(addr, protocol))? {
                Ok(s) => s,
                // No SCTP in this kernel: the probes report their cells as
                // skipped with that reason.
                Err(e) if protocol == Protocol::Sctp && no_sctp(&e) => continue,
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "listening on {protocol} {addr} in {}: {e}",
                        netns.name
                    ));
                }
            };
            self.tasks.push(match protocol {
                // An SCTP one-to-one socket accepts like a TCP one.
                Protocol::Tcp | Protocol::Sctp => {
                    let l = tokio::net::TcpListener::from_std(socket.into())?;
                    tokio::spawn(async move {
                        // Echo what each connection sends, until it closes:
                        // held connections check they still carry data.
                        while let Ok((mut stream, _)) = l.accept().await {
                            tokio::spawn(async move {
                                let (mut r, mut w) = stream.split();
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            });
                        }
                    })
                }
                Protocol::Udp => {
                    let u = tokio::net::UdpSocket::from_std(socket.into())?;
                    tokio::spawn(async move {
                        let mut buf = [0u8; 512];
                        while let Ok((n, from)) = u.recv_from(&mut buf).await {
                            let _ = u.send_to(&buf[..n], from).await;
                        }
                    })
                }
            });
        }
        Ok(())
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
