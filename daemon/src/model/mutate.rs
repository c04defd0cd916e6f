//! Hostile and broken input for the fuzz tests of every parser Palisade and
//! its lab have (policies, objects, scenario files, the test API server's
//! requests): mutations of valid documents and random YAML- and JSON-shaped
//! text, each built from a list of numbers, in the manner of
//! `compile/property.rs`: proptest generates the list and, on a failure,
//! shrinks it (shorter lists and smaller numbers mean fewer and simpler
//! mutations), so a failing input comes back small, and a seeded runner
//! replays it. Test data, like `standard.rs`: not in the node agent.

/// How many cases a fuzz test runs: `base`, the budget of the normal test
/// run (all fuzz tests together add about 30 s to `cargo test` in a debug
/// build on two cores), unless `PALISADE_FUZZ_CASES` says otherwise:
/// `PALISADE_FUZZ_CASES=50x` runs 50 times the budget, a plain number
/// that many cases (`PALISADE_FUZZ_CASES=50x cargo test fuzz` for a long
/// run). The runners are seeded: the same count replays the same cases.
pub fn fuzz_cases(base: u32) -> u32 {
    let Ok(asked) = std::env::var("PALISADE_FUZZ_CASES") else {
        return base;
    };
    let asked = asked.trim();
    match asked.strip_suffix('x') {
        Some(times) => times
            .parse::<u32>()
            .map_or(base, |t| base.saturating_mul(t)),
        None => asked.parse().unwrap_or(base),
    }
}

/// Choices read from a list of numbers; past its end every choice is 0.
pub struct Choices<'a> {
    choices: &'a [u32],
    next: usize,
}

impl<'a> Choices<'a> {
    pub fn new(choices: &'a [u32]) -> Self {
        Self { choices, next: 0 }
    }

    /// A number below `n` (0 for `n` = 0).
    pub fn below(&mut self, n: usize) -> usize {
        let choice = self.choices.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        if n == 0 { 0 } else { choice as usize % n }
    }

    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.below(items.len())]
    }

    /// Whether any choice is left.
    pub fn left(&self) -> bool {
        self.next < self.choices.len()
    }
}

/// Scalars of every type YAML has, and of none: what a field may be given
/// instead of what it expects.
pub const SCALARS: &[&str] = &[
    "0",
    "-1",
    "80",
    "65535",
    "65536",
    "4294967296",
    "99999999999999999999999",
    "-9223372036854775809",
    "1e400",
    "-0.0",
    "0x50",
    "0o17",
    ".nan",
    ".inf",
    "true",
    "yes",
    "null",
    "~",
    "\"\"",
    "''",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: {b: c}}",
    "x",
    "\"80\"",
    "'a b'",
    "serve-80-tcp",
    "/etc/shadow",
    "/",
    "/**/",
    "/a/../b",
    "10.0.0.0/8",
    "::/0",
    "fd00::/129",
    "300.1.1.1/8",
    "TCP",
    "SCTP",
    "icmp",
    "Deny",
    "Pass",
    "Audit",
    "Allowlist",
    "Admin",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"😀\"",
    "ÿ",
    "!!binary aGk=",
    "!!str 1",
    "!!int x",
    "!custom x",
    "&a x",
    "*a",
    "*nope",
    "<<: {a: 1}",
    "|\n  multi\n  line",
    ">-\n  folded",
    "a: b: c",
    "- - -",
];

/// Mapping keys: the fields of every kind Palisade reads and of scenario
/// files, and near misses.
pub const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "status",
    "podSelector",
    "namespaceSelector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "policyTypes",
    "ingress",
    "egress",
    "from",
    "to",
    "ports",
    "port",
    "endPort",
    "protocol",
    "ipBlock",
    "cidr",
    "except",
    "action",
    "priority",
    "mode",
    "tier",
    "subject",
    "process",
    "file",
    "posture",
    "rules",
    "paths",
    "dirs",
    "path",
    "recursive",
    "patterns",
    "fromSource",
    "ownerOnly",
    "readOnly",
    "selector",
    "matchPaths",
    "matchDirectories",
    "matchPatterns",
    "dir",
    "pattern",
    "severity",
    "message",
    "tags",
    "network",
    "capabilities",
    "<<",
    "?",
    "podSelektor",
    // Scenario files' own.
    "model",
    "namespaces",
    "pods",
    "policies",
    "steps",
    "probes",
    "expect",
    "externals",
    "nodes",
    "serve",
    "apply",
    "update",
    "relabel",
    "create",
    "connect",
    "held",
    "checks",
    "",
    "1",
    "\"spec\"",
];

/// Pieces of YAML syntax, inserted anywhere.
pub const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    ": ",
    "- ",
    "? ",
    "&a ",
    "*a",
    "!",
    "!!",
    "%YAML 1.2\n",
    "---",
    "\n---\n",
    "...",
    "#",
    "\"",
    "'",
    "|",
    ">",
    "\t",
    "\r",
    "\r\n",
    "\u{feff}",
    "\0",
    "@",
    "`",
    "\\",
    "\u{85}",
    "\u{2028}",
    "  ",
    "\n",
    "\n  ",
    "é",
];

/// The keys the API gives the kinds Palisade reads, for shaped text.
const HEADS: &[(&str, &str)] = &[
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("palisade.dev/v1alpha1", "PalisadeNetworkPolicy"),
    ("palisade.dev/v1alpha1", "PalisadeClusterNetworkPolicy"),
    ("security.kubearmor.com/v1", "KubeArmorPolicy"),
    ("v1", "Pod"),
    ("v1", "Namespace"),
];

fn lines(text: &[u8]) -> Vec<Vec<u8>> {
    text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    lines.join(&b'\n')
}

/// Where a line's value starts: after its `key: ` or its `- `.
fn value_start(line: &[u8]) -> Option<usize> {
    let colon = line.windows(2).position(|w| w == b": ").map(|i| i + 2);
    let dash = line
        .iter()
        .position(|&b| b != b' ')
        .filter(|&i| line[i..].starts_with(b"- "))
        .map(|i| i + 2);
    colon.or(dash)
}

/// `seed` with mutations applied as `choices` say, each chosen from: a
/// line dropped, duplicated, repeated up to a thousand times, swapped with
/// another, re-indented or taken from one of the `donors`; a byte flipped;
/// the text truncated; a value replaced by a scalar of another type
/// ([`SCALARS`]) or nested up to 40 levels deep; a key renamed ([`KEYS`]);
/// a piece of syntax inserted ([`TOKENS`]). The result may not be UTF-8.
pub fn mutate(seed: &str, donors: &[&str], choices: &[u32]) -> Vec<u8> {
    let mut c = Choices::new(choices);
    let mut text = seed.as_bytes().to_vec();
    while c.left() {
        let mut ls = lines(&text);
        let n = ls.len();
        match c.below(12) {
            0 => {
                ls.remove(c.below(n));
            }
            1 => {
                let i = c.below(n);
                ls.insert(i, ls[i].clone());
            }
            2 => {
                let (i, j) = (c.below(n), c.below(n));
                ls.swap(i, j);
            }
            3 => {
                let at = c.below(text.len());
                if let Some(b) = text.get_mut(at) {
                    *b ^= 1 + c.below(255) as u8;
                }
                continue;
            }
            4 => {
                text.truncate(c.below(text.len() + 1));
                continue;
            }
            5 => {
                let i = c.below(n);
                let line = &mut ls[i];
                let at = value_start(line).unwrap_or(line.len());
                line.truncate(at);
                line.extend_from_slice(c.pick(SCALARS).as_bytes());
            }
            6 => {
                let at = c.below(text.len() + 1);
                let token = c.pick(TOKENS).as_bytes();
                text.splice(at..at, token.iter().copied());
                continue;
            }
            7 => {
                let i = c.below(n);
                match c.below(4) {
                    0 => ls[i].insert(0, b' '),
                    1 => ls[i].splice(0..0, *b"  ").for_each(drop),
                    2 => ls[i].insert(0, b'\t'),
                    _ => {
                        if ls[i].first() == Some(&b' ') {
                            ls[i].remove(0);
                        }
                    }
                }
            }
            8 => {
                if !donors.is_empty() {
                    let donor = lines(c.pick(donors).as_bytes());
                    let line = donor[c.below(donor.len())].clone();
                    ls.insert(c.below(n + 1), line);
                }
            }
            9 => {
                let i = c.below(n);
                let depth = 1 + c.below(40);
                let line = &mut ls[i];
                let at = value_start(line).unwrap_or(line.len());
                let value = line.split_off(at);
                let (open, close) = if c.below(2) == 0 {
                    ("[", "]")
                } else {
                    ("{a: ", "}")
                };
                line.extend_from_slice(open.repeat(depth).as_bytes());
                line.extend_from_slice(if value.is_empty() { b"x" } else { &value });
                line.extend_from_slice(close.repeat(depth).as_bytes());
            }
            10 => {
                let i = c.below(n);
                let times = *c.pick(&[2, 10, 100, 1_000]);
                let line = ls[i].clone();
                ls.splice(i..i, std::iter::repeat_n(line, times));
            }
            _ => {
                let i = c.below(n);
                let line = &mut ls[i];
                let indent = line.iter().take_while(|&&b| b == b' ' || b == b'-').count();
                if let Some(colon) = line.iter().position(|&b| b == b':') {
                    let key = c.pick(KEYS).as_bytes();
                    if colon >= indent {
                        line.splice(indent..colon, key.iter().copied());
                    }
                }
            }
        }
        text = join(&ls);
    }
    text
}

/// One of `seeds` (the first choice says which) mutated as the other
/// choices say ([`mutate`]), the seeds also the donors of lines.
pub fn mutant(seeds: &[&str], choices: &[u32]) -> Vec<u8> {
    let (first, rest) = choices.split_first().unwrap_or((&0, &[]));
    let seed = seeds.get(*first as usize % seeds.len().max(1)).copied();
    mutate(seed.unwrap_or(""), seeds, rest)
}

/// Random YAML- or JSON-shaped text as `choices` say: mostly a document
/// that starts as one of the kinds Palisade reads would and goes on with
/// any of their fields ([`KEYS`]) holding any values ([`SCALARS`]), nested
/// maps and lists, in block style, flow style or JSON.
pub fn shaped(choices: &[u32]) -> String {
    let mut c = Choices::new(choices);
    let style = c.below(3);
    let mut fields = Vec::new();
    if c.below(8) != 0 {
        let (api, kind) = *c.pick(HEADS);
        fields.push(("apiVersion".to_owned(), Value::Scalar(api.to_owned())));
        fields.push(("kind".to_owned(), Value::Scalar(kind.to_owned())));
        let meta = vec![
            ("name".to_owned(), Value::Scalar("p".to_owned())),
            ("namespace".to_owned(), Value::Scalar("x".to_owned())),
        ];
        fields.push(("metadata".to_owned(), Value::Map(meta)));
    }
    let more = c.below(6);
    for _ in 0..more {
        fields.push(((*c.pick(KEYS)).to_owned(), value(&mut c, 0)));
    }
    let root = Value::Map(fields);
    let mut out = String::new();
    match style {
        0 => block(&root, 0, &mut out),
        1 => flow(&root, false, &mut out),
        _ => flow(&root, true, &mut out),
    }
    out
}

enum Value {
    Scalar(String),
    Map(Vec<(String, Value)>),
    List(Vec<Value>),
}

fn value(c: &mut Choices<'_>, depth: usize) -> Value {
    let kind = if depth >= 6 { 0 } else { c.below(3) };
    match kind {
        0 => Value::Scalar((*c.pick(SCALARS)).to_owned()),
        1 => {
            let n = c.below(4);
            Value::Map(
                (0..n)
                    .map(|_| ((*c.pick(KEYS)).to_owned(), value(c, depth + 1)))
                    .collect(),
            )
        }
        _ => {
            let n = c.below(4);
            Value::List((0..n).map(|_| value(c, depth + 1)).collect())
        }
    }
}

fn block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Scalar(s) => {
            out.push(' ');
            out.push_str(s);
            out.push('\n');
        }
        Value::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        Value::List(items) if items.is_empty() => out.push_str(" []\n"),
        Value::Map(entries) => {
            if indent > 0 {
                out.push('\n');
            }
            for (k, v) in entries {
                out.push_str(&format!("{pad}{k}:"));
                block(v, indent + 2, out);
            }
        }
        Value::List(items) => {
            out.push('\n');
            for v in items {
                out.push_str(&format!("{pad}-"));
                block(v, indent + 2, out);
            }
        }
    }
}

fn flow(v: &Value, json: bool, out: &mut String) {
    let quote = |s: &str| {
        if json {
            serde_json::to_string(s).unwrap_or_default()
        } else {
            s.to_owned()
        }
    };
    match v {
        Value::Scalar(s) => out.push_str(&quote(s)),
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&quote(k));
                out.push_str(": ");
                flow(v, json, out);
            }
            out.push('}');
        }
        Value::List(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(v, json, out);
            }
            out.push(']');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_choices_no_mutation_and_each_choice_list_replays() {
        let seed = "a: 1\nb:\n- c\n";
        assert_eq!(mutate(seed, &[], &[]), seed.as_bytes());
        let choices = [5, 1, 8, 3, 4, 200, 9, 0, 3, 1];
        assert_eq!(
            mutate(seed, &[], &choices),
            mutate(seed, &[], &choices),
            "the same list, the same text"
        );
        assert_ne!(mutate(seed, &[], &choices), seed.as_bytes());
        let shaped_twice = (shaped(&[1, 2, 3, 4, 5]), shaped(&[1, 2, 3, 4, 5]));
        assert_eq!(shaped_twice.0, shaped_twice.1);
        assert!(shaped(&[0, 1, 0]).contains("apiVersion"));
    }
}
