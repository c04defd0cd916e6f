//! Helpers shared by the compiler's tests.

use super::{compile, evaluate::connection};
use crate::model::{Pod, Snapshot, parse::parse_documents, standard};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// The standard model as scenario files get it: pod addresses 10.244.0.1-9
/// in order x/a, x/b, x/c, y/a, ... z/c.
pub fn standard() -> Snapshot {
    standard::snapshot()
}

pub fn with(yaml: &str) -> Snapshot {
    let mut s = standard();
    for doc in parse_documents(yaml, "test.yaml", "x") {
        s.policies.push(doc.unwrap().policy().into());
    }
    s
}

pub fn pod<'a>(s: &'a Snapshot, key: &str) -> &'a Pod {
    s.pods.iter().find(|p| p.key() == key).unwrap()
}

/// Asserts reachability from every pod to `to` on (protocol, port).
pub fn check(s: &Snapshot, to: &str, protocol: u8, port: u16, reachable_from: &[&str]) {
    let c = compile(s);
    for from in &s.pods {
        if from.key() == to {
            continue;
        }
        let expected = reachable_from.contains(&from.key().as_str());
        assert_eq!(
            connection(&c, from, pod(s, to), protocol, port),
            expected,
            "{} -> {to} {protocol}/{port}",
            from.key()
        );
    }
}

pub const EVERYONE_BUT_SELF: &[&str] = &[
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];
