//! Talking to a running daemon's local endpoint (`palisade events`,
//! `palisade explain` without a file), from this namespace or another, and
//! to other plain-HTTP endpoints inside a namespace (the lab's scrapes).
//!
//! Each call connects a socket first, then speaks HTTP/1.1 over it with
//! hyper: a socket keeps the network namespace it was made in, so it can be
//! made in another namespace and no `.await` ever spans a namespace switch.

use std::{io, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use bytes::{Buf as _, Bytes};
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::runtime::Runtime;

/// A GET against the daemon's local endpoint; the body of its 200 answer,
/// read as it arrives (the event stream never ends by itself).
pub fn get(
    addr: SocketAddr,
    netns: Option<&Path>,
    path: &str,
) -> anyhow::Result<io::BufReader<Body>> {
    let connect = move || std::net::TcpStream::connect(addr);
    // The socket keeps the namespace it was made in.
    let stream = match netns {
        Some(path) => crate::netns::in_netns(path, connect)??,
        None => connect().with_context(|| format!("connecting to the daemon at {addr}"))?,
    };
    let body = Body::open(stream, path, None).with_context(|| format!("GET {addr}{path}"))?;
    Ok(io::BufReader::new(body))
}

/// The body of a 200 answer, with the runtime that drives its connection
/// (on the caller's thread, which must run no other runtime).
pub struct Body {
    runtime: Runtime,
    body: Incoming,
    pending: Bytes,
}

impl Body {
    /// Sends GET `path` over a connected socket and waits for the head of
    /// the answer, within `limit` when given.
    pub fn open(
        stream: std::net::TcpStream,
        path: &str,
        limit: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let body = runtime.block_on(within(limit, request(stream, path)))?;
        Ok(Self {
            runtime,
            body,
            pending: Bytes::new(),
        })
    }

    /// The whole body, within `limit`.
    pub fn text(self, limit: Duration) -> anyhow::Result<String> {
        let bytes = self.runtime.block_on(within(Some(limit), async {
            Ok(self.body.collect().await?.to_bytes())
        }))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl io::Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.runtime.block_on(self.body.frame()) {
                None => return Ok(0),
                Some(frame) => {
                    if let Ok(data) = frame.map_err(io::Error::other)?.into_data() {
                        self.pending = data;
                    }
                }
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        Ok(n)
    }
}

async fn within<T>(
    limit: Option<Duration>,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, f)
            .await
            .with_context(|| format!("no answer within {limit:?}"))?,
        None => f.await,
    }
}

async fn request(stream: std::net::TcpStream, path: &str) -> anyhow::Result<Incoming> {
    stream.set_nonblocking(true)?;
    let io = TokioIo::new(tokio::net::TcpStream::from_std(stream)?);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, "palisade")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body();
    if status != StatusCode::OK {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!("{status}: {}", String::from_utf8_lossy(&text).trim());
    }
    Ok(body)
}

/// What a query value keeps unencoded: letters, digits, `-`, `.`, `_`.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

/// `k=v&...` of the pairs that have a value, values percent-encoded.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| {
            Some(format!(
                "{k}={}",
                utf8_percent_encode(v.as_ref()?, QUERY_VALUE)
            ))
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_encode_what_urls_reserve_and_skip_absent_values() {
        assert_eq!(
            query(&[
                ("pod", Some("x/a b")),
                ("verdict", None),
                ("namespace", Some("x"))
            ]),
            "pod=x%2Fa%20b&namespace=x"
        );
    }
}
