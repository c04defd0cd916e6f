//! Fuzzing of the test API server's request parsing, within the budget of
//! the normal test run (`palisade::model::mutate::fuzz_cases`;
//! `PALISADE_FUZZ_CASES=50x cargo test -p palisade-lab fuzz` for a long
//! run):
//!
//! - whole requests over HTTP, built from the real paths, query parameters
//!   and bodies and mutated (methods, path segments, percent-escapes,
//!   query values of every shape, content types, broken and deep JSON,
//!   broken request lines): every request gets an answer, a `Status` with
//!   the code of an [`ApiError`] (or hyper's own 400 for what is not
//!   HTTP), never a dropped connection or a 500, and the server still
//!   answers afterwards;
//! - the parsers themselves, on random and mutated text: label and field
//!   selectors ([`Selector::parse`], then matching), continue tokens
//!   ([`parse_continue_token`]), and JSON merge patches ([`merge_patch`],
//!   which must also be idempotent, as RFC 7386 patches are).
//!
//! A failure shrinks and replays (seeded). Found so far, each kept below as
//! a regression test: see [`regressions`].

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use palisade::model::mutate::{Choices, mutate};
use proptest::{collection::vec, prelude::*};
use serde_json::{Value, json};

use super::{
    ApiError, ApiServer, RESOURCES, patch::merge_patch, select::Selector,
    store::parse_continue_token,
};
use crate::scenario_fuzz::run_seeded;

const PATHS: &[&str] = &[
    "/api/v1/pods",
    "/api/v1/namespaces/x/pods",
    "/api/v1/namespaces/x/pods/a",
    "/api/v1/namespaces/x/pods/a/status",
    "/api/v1/namespaces",
    "/api/v1/namespaces/x",
    "/api/v1/namespaces/x/configmaps/cm",
    "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies",
    "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/np",
    "/apis/networking.k8s.io/v1/networkpolicies",
    "/apis/palisade.dev/v1alpha1/palisadeclusternetworkpolicies",
    "/apis/palisade.dev/v1alpha1/palisadeclusternetworkpolicies/c",
    "/apis/security.kubearmor.com/v1/namespaces/x/kubearmorpolicies/k",
    "/apis/events.k8s.io/v1/namespaces/x/events",
    "/version",
    "/",
    "/api",
    "/apis/a/b/c/d/e/f/g",
];

const SEGMENTS: &[&str] = &[
    "%",
    "%zz",
    "%ff%fe",
    "%2F",
    "%2e%2e",
    "..",
    "",
    "a%00b",
    "%C3%A9",
    "x",
    "pods",
    "status",
    "namespaces",
    "v1",
    "api",
    "*",
    "~",
    "a b",
];

/// Query parameters, each with values of its own shape; any parameter
/// also gets the others' values now and then.
const QUERY: &[(&str, &[&str])] = &[
    ("labelSelector", LABELS),
    ("fieldSelector", FIELDS),
    ("limit", NUMBERS),
    ("continue", TOKENS),
    ("resourceVersion", NUMBERS),
    (
        "resourceVersionMatch",
        &["Exact", "NotOlderThan", "", "exact", "Any"],
    ),
    ("watch", FLAGS),
    ("timeoutSeconds", NUMBERS),
    ("allowWatchBookmarks", FLAGS),
    ("sendInitialEvents", FLAGS),
    ("dryRun", &["All", ""]),
    ("", &["", "x"]),
];

const NUMBERS: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "3",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e3",
    "0x10",
    "+5",
    " 5",
];

const FLAGS: &[&str] = &["true", "false", "1", "0", "T", "True", "yes", "", "tRuE"];

const LABELS: &[&str] = &[
    "a=b",
    "a==b,c!=d",
    "a in (x,y)",
    "a notin ()",
    "a in(x)",
    "!a",
    "! a",
    "a>1",
    "a<x",
    "a>99999999999999999999",
    "((",
    ")",
    "a in (",
    "a,,b",
    "/a=b",
    "a/=b",
    "a=b=c",
    "é=é",
    "a=\u{0}",
    "",
];

const FIELDS: &[&str] = &[
    "metadata.name=a",
    "metadata.name==a,metadata.namespace!=x",
    "spec.nodeName!=n\\,m",
    "status.phase=Running",
    "spec.nodeName",
    "a=b",
    "\\",
    "a\\",
    "=",
    "",
];

/// Continue tokens: revision, then the namespace and name in hex.
const TOKENS: &[&str] = &[
    "1.78.61",
    "1.x.y",
    "9.zz.61",
    "3.61",
    "1..",
    "1.6.",
    "18446744073709551615.61.61",
    "1.c3.a9",
    "1.e.61",
    "1.c3.28",
    "",
];

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW", "get",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/merge-patch+json",
    "",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "text/plain; charset=utf-8",
    "APPLICATION/JSON ; charset=x",
    "application/merge-patch+json;;;",
];

/// Valid bodies of the kinds served, to be mutated.
const BODIES: &[&str] = &[
    r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}}"#,
    r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np", "namespace": "x", "resourceVersion": "1"}, "spec": {"podSelector": {}}}"#,
    r#"{"apiVersion": "palisade.dev/v1alpha1", "kind": "PalisadeClusterNetworkPolicy", "metadata": {"generateName": "c-"}, "spec": {}}"#,
    r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "uid": "u", "labels": {"ns": "x"}}}"#,
    r#"{"metadata": {"labels": {"app": null}, "annotations": {"a": "b"}}}"#,
    r#"{"kind": "DeleteOptions", "preconditions": {"uid": "u", "resourceVersion": "5"}}"#,
    "",
    "null",
    "[]",
    "{}",
    r#"{"metadata": null}"#,
    r#"{"apiVersion": 1, "kind": ["Pod"]}"#,
];

/// A request as `choices` say: a method, a path (maybe with a segment
/// changed), query parameters, a content type and a body (maybe
/// mutated, maybe nested deeply), as raw HTTP/1.1 bytes; now and then
/// the request's head itself mutated, which the second value says (hyper
/// may close the connection on what is not HTTP without a word).
/// Choices past the list's end are 0: the plainest request, unchanged.
fn request(choices: &[u32]) -> (Vec<u8>, bool) {
    let mut c = Choices::new(choices);
    let method = *c.pick(METHODS);
    let mut segments: Vec<String> = c.pick(PATHS).split('/').map(str::to_owned).collect();
    if c.below(3) == 1 {
        let at = c.below(segments.len() + 1);
        segments.insert(at, (*c.pick(SEGMENTS)).to_owned());
    }
    if c.below(4) == 1 {
        let at = c.below(segments.len());
        segments[at] = (*c.pick(SEGMENTS)).to_owned();
    }
    let mut target = segments.join("/");
    // A watch a third of the time: its parameters are read only then.
    let watch = c.below(3) == 1;
    let params: Vec<String> = (0..c.below(4))
        .map(|_| {
            let (key, values) = *c.pick(QUERY);
            let values = if c.below(5) == 1 {
                c.pick(QUERY).1
            } else {
                values
            };
            let value = *c.pick(values);
            let value = if c.below(4) == 1 {
                value.replace(' ', "+")
            } else {
                form_urlencoded::byte_serialize(value.as_bytes()).collect()
            };
            format!("{key}={value}")
        })
        .collect();
    let params = [
        &["watch=true".to_owned()][..usize::from(watch)],
        &params[..],
    ]
    .concat();
    if !params.is_empty() {
        target.push('?');
        target.push_str(&params.join("&"));
    }
    let content_type = *c.pick(CONTENT_TYPES);
    let mut body = c.pick(BODIES).as_bytes().to_vec();
    match c.below(4) {
        1 => {
            let depth = 1 + c.below(300);
            body = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
        }
        2 => {
            let mutations: Vec<u32> = (0..c.below(12)).map(|_| c.below(1 << 16) as u32).collect();
            body = mutate(&String::from_utf8_lossy(&body), BODIES, &mutations);
        }
        _ => {}
    }
    let mut raw = format!(
        "{method} {target} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let mangled = c.below(8) == 1;
    if mangled {
        // The head mutated, without a body: whatever it became, it ends
        // as a head ends and announces nothing more, so the server has
        // all of it (else it would rightly wait for the rest).
        let mutations: Vec<u32> = (0..c.below(6)).map(|_| c.below(1 << 16) as u32).collect();
        let head_end = raw.len() - body.len();
        let head = mutate(&String::from_utf8_lossy(&raw[..head_end]), &[], &mutations);
        let head = String::from_utf8_lossy(&head).into_owned();
        let lines: Vec<&str> = head
            .split("\r\n")
            .filter(|l| {
                let l = l.trim().to_ascii_lowercase();
                !l.is_empty()
                    && !l.starts_with("content-length")
                    && !l.starts_with("transfer-encoding")
            })
            .collect();
        raw = format!("{}\r\nContent-Length: 0\r\n\r\n", lines.join("\r\n")).into_bytes();
    }
    (raw, mangled)
}

/// Codes a request may get: an [`ApiError`]'s (503 only while made
/// unavailable, never here), success, and hyper's own for what it cannot
/// read as HTTP.
const ANSWERS: &[u16] = &[
    200, 201, 400, 404, 405, 409, 410, 413, 415, 504, 414, 431, 505,
];

/// The status code the server answers `raw` with (`None` when it closes
/// the connection without a word), or why there is none.
fn answer(server: &ApiServer, raw: &[u8]) -> Result<Option<u16>, String> {
    let mut stream = TcpStream::connect(server.addr()).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(raw);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    if got.is_empty() {
        return Ok(None);
    }
    let head = String::from_utf8_lossy(&got);
    // A request line mutated to HTTP/1.0 gets its answer in 1.0.
    head.strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .map(Some)
        .ok_or_else(|| format!("no status line, the connection closed after {head:?}"))
}

fn served() -> ApiServer {
    let server = ApiServer::start(TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    for body in &BODIES[..4] {
        let object: Value = serde_json::from_str(body).unwrap();
        let _ = server.create(object);
    }
    server
}

#[test]
fn fuzz_http_requests_get_an_api_answer() {
    let server = served();
    run_seeded(1_500, vec(any::<u32>(), 0..40), |choices| {
        let (raw, mangled) = request(&choices);
        let shown = String::from_utf8_lossy(&raw).into_owned();
        match answer(&server, &raw) {
            Ok(Some(code)) => prop_assert!(ANSWERS.contains(&code), "{} for {:?}", code, shown),
            // A whole request always gets an answer; a crash is silence.
            Ok(None) => prop_assert!(mangled, "no answer to {:?}", shown),
            Err(e) => prop_assert!(false, "{} for {:?}", e, shown),
        }
        Ok(())
    });
    let version = b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(
        answer(&server, version),
        Ok(Some(200)),
        "the server still serves"
    );
}

fn text() -> impl Strategy<Value = String> {
    let pieces: Vec<&str> = [LABELS, FIELDS, TOKENS, NUMBERS]
        .concat()
        .into_iter()
        .chain([
            "a", "=", "!", ",", "(", ")", " ", "in", "notin", "\\", ".", "é",
        ])
        .collect();
    prop_oneof![
        vec(prop::sample::select(pieces), 0..8).prop_map(|p| p.concat()),
        ".{0,40}",
    ]
}

#[test]
fn fuzz_selectors_and_continue_tokens() {
    let objects = [
        json!({"metadata": {"name": "a", "namespace": "x", "labels": {"a": "b", "n": "5"}},
               "spec": {"nodeName": "n"}, "status": {"phase": "Running"}}),
        json!({"metadata": {"labels": null}}),
        json!(null),
    ];
    run_seeded(
        2_000,
        (text(), text(), 0..RESOURCES.len()),
        |(labels, fields, r)| {
            match Selector::parse(&RESOURCES[r], Some(&labels), Some(&fields)) {
                Ok(selector) => {
                    for o in &objects {
                        selector.matches(o);
                    }
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
            match parse_continue_token(&labels) {
                Ok(_) => {}
                Err(e) => prop_assert!(matches!(e, ApiError::BadRequest(_)), "{:?}", e),
            }
            Ok(())
        },
    );
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-c]{0,2}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-c]{1}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn fuzz_merge_patches_are_idempotent() {
    run_seeded(2_000, (json_value(), json_value()), |(target, patch)| {
        let mut once = target;
        merge_patch(&mut once, &patch);
        let mut twice = once.clone();
        merge_patch(&mut twice, &patch);
        prop_assert_eq!(once, twice);
        Ok(())
    });
}

/// Inputs the fuzzing found that once failed, minimal.
mod regressions {
    use super::*;

    /// A watch's deadline overflowed the clock and the connection went
    /// down with a panic (found by a long run: `GET /api/v1/namespaces?
    /// watch=true&timeoutSeconds=9223372036854775807`); it streams now.
    #[test]
    fn a_watch_with_the_longest_timeout_streams() {
        let server = served();
        for timeout in ["9223372036854775807", "18446744073709551615"] {
            let raw = format!(
                "GET /api/v1/namespaces?watch=true&timeoutSeconds={timeout} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            assert_eq!(answer(&server, raw.as_bytes()), Ok(Some(200)), "{timeout}");
        }
        let raw = "GET /api/v1/namespaces?watch=true&timeoutSeconds=18446744073709551616 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert_eq!(answer(&server, raw.as_bytes()), Ok(Some(400)), "not a u64");
    }
}
