//! Talking to a running daemon's local endpoint (`palisade events`,
//! `palisade explain` without a file), from this namespace or another.

use std::path::Path;

use anyhow::{Context as _, bail};

/// A GET against the daemon's local endpoint; the stream after the head.
pub fn get(
    addr: std::net::SocketAddr,
    netns: Option<&Path>,
    path: &str,
) -> anyhow::Result<std::io::BufReader<std::net::TcpStream>> {
    use std::io::{BufRead as _, Write as _};
    let connect = move || std::net::TcpStream::connect(addr);
    // The socket keeps the namespace it was made in.
    let stream = match netns {
        Some(path) => crate::netns::in_netns(path, connect)??,
        None => connect().with_context(|| format!("connecting to the daemon at {addr}"))?,
    };
    write!(
        &stream,
        "GET {path} HTTP/1.1\r\nHost: palisade\r\nConnection: close\r\n\r\n"
    )?;
    let mut reader = std::io::BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let ok = status.starts_with("HTTP/1.1 200");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    if !ok {
        let mut body = String::new();
        std::io::Read::read_to_string(&mut reader, &mut body)?;
        bail!("{addr}: {} {}", status.trim(), body.trim());
    }
    Ok(reader)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", encode(v.as_ref()?))))
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
