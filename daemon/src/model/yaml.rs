//! YAML for every file Palisade reads (policies, objects, scenarios), with
//! the position of each fault: serde-saphyr reports the line and column of
//! what it refused, refuses duplicate keys and enforces the document limits
//! of `limits.rs` (depth, nodes, aliases and their expansion, scalar bytes;
//! a breach is reported naming the limit), and [`Positions`] finds the line
//! and column of a field that parsed but failed validation afterwards.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor},
};
/// A value with the position it was read from (see [`At::of`]).
pub use serde_saphyr::Spanned;
use serde_saphyr::{DefaultMessageFormatter, MessageFormatter as _, budget::BudgetBreach};

use super::limits::{
    MAX_ALIAS_EXPANSION, MAX_ALIASES, MAX_DEPTH, MAX_NODES, MAX_POSITIONED_NODES, MAX_SCALAR_BYTES,
    yaml_options,
};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct At {
    pub line: usize,
    pub column: usize,
}

impl At {
    /// A position serde-saphyr reports; `None` for its "unknown".
    pub fn of(location: serde_saphyr::Location) -> Option<Self> {
        let line = usize::try_from(location.line()).ok()?;
        let column = usize::try_from(location.column()).ok()?;
        (line > 0).then_some(Self {
            line,
            column: column.max(1),
        })
    }
}

/// A document that is not valid YAML or not of the expected shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// `None` when the parser could not tell.
    pub at: Option<At>,
    /// The fault alone, without its position.
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = self.at {
            write!(f, "line {} column {}: ", at.line, at.column)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The error with the path of the field at its position in `doc` in
    /// front (`spec.mode: unknown variant`, `probes[0]: unknown field`),
    /// when one is there: a position alone does not name a field.
    pub fn with_field(self, doc: &str) -> Self {
        let field = self.at.and_then(|at| Positions::of(doc).path_at(at));
        match field {
            Some(field) => Self {
                message: format!("{field}: {}", self.message),
                ..self
            },
            None => self,
        }
    }
}

impl From<serde_saphyr::Error> for Error {
    fn from(e: serde_saphyr::Error) -> Self {
        let e = e.without_snippet();
        let message =
            over_limit(e).unwrap_or_else(|| DefaultMessageFormatter.format_message(e).into_owned());
        Self {
            at: e.location().and_then(At::of),
            // The formatter leaves control characters to its caller; a
            // message is one line of a log or a status file.
            message: message.chars().flat_map(char::escape_debug).collect(),
        }
    }
}

/// The message for a document that breaks one of the limits of
/// `limits.rs`, naming it (serde-saphyr's own says "budget breached:
/// Depth { depth: 33 }").
fn over_limit(mut e: &serde_saphyr::Error) -> Option<String> {
    use serde_saphyr::Error as E;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = e {
        e = error;
    }
    let bomb = "aliases (YAML anchors) expanded to more than";
    Some(match e {
        E::Budget { breach, .. } => match breach {
            BudgetBreach::Depth { .. } => {
                format!("nested deeper than {MAX_DEPTH} levels, the limit for a document")
            }
            BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => {
                format!("more than {MAX_NODES} nodes, the limit for a document")
            }
            BudgetBreach::Aliases { .. } => {
                format!("more than {MAX_ALIASES} aliases, the limit for a document")
            }
            BudgetBreach::AliasAnchorRatio { aliases, anchors } => format!(
                "{aliases} aliases of {anchors} anchors: aliases used that much more often                  than anchors are defined are refused as an alias bomb"
            ),
            BudgetBreach::ScalarBytes { .. } | BudgetBreach::RecordedAnchorBytes { .. } => {
                format!("scalars of more than {MAX_SCALAR_BYTES} bytes, the limit for a document")
            }
            BudgetBreach::RecordedAnchorEvents { .. } => {
                format!("{bomb} {MAX_ALIAS_EXPANSION} nodes, the limit for a document")
            }
            other => format!("over a limit of the document: {other:?}"),
        },
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => {
            format!("{bomb} {MAX_ALIAS_EXPANSION} nodes, the limit for a document")
        }
        E::AliasReplayStackDepthExceeded { .. } => {
            format!("aliases nested deeper than {MAX_DEPTH} levels, the limit for a document")
        }
        _ => return None,
    })
}

/// Deserializes one YAML document, within the limits of `limits.rs`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Error> {
    Ok(serde_saphyr::from_str_with_options(
        text,
        yaml_options(MAX_NODES),
    )?)
}

/// Every document of a YAML stream, empty ones left out, within the limits
/// of `limits.rs` (each document's, and the number of documents).
pub fn documents<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, Error> {
    Ok(serde_saphyr::from_multiple_with_options(
        text,
        yaml_options(MAX_NODES),
    )?)
}

/// YAML text of a value (for generated files).
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_saphyr::to_string(value).map_err(|e| Error {
        at: None,
        message: e.to_string(),
    })
}

/// Where each node of a YAML document starts.
#[derive(Debug, Default)]
pub struct Positions(Option<Spanned<Node>>);

#[derive(Debug)]
enum Node {
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl Positions {
    /// The positions of `text`'s nodes; none when it does not parse or has
    /// more than [`MAX_POSITIONED_NODES`] (each is kept with its span).
    pub fn of(text: &str) -> Self {
        Self(serde_saphyr::from_str_with_options(text, yaml_options(MAX_POSITIONED_NODES)).ok())
    }

    /// Where each item of the list at `path` starts; none when it is not a
    /// list.
    pub fn items(&self, path: &str) -> Vec<At> {
        match self.node(path).map(|n| &n.value) {
            Some(Node::Seq(items)) => items.iter().filter_map(|i| At::of(i.referenced)).collect(),
            _ => Vec::new(),
        }
    }

    /// The path of the node that starts at `at` (`spec.mode`), or of the
    /// map one of whose keys starts there (`probes[0]`), if any.
    pub fn path_at(&self, at: At) -> Option<String> {
        // The deepest match: a list starts where its first item does.
        fn find(node: &Spanned<Node>, at: At, path: &mut String) -> bool {
            let len = path.len();
            let found = match &node.value {
                Node::Map(entries) => entries.iter().any(|(key, value)| {
                    path.truncate(len);
                    if At::of(key.referenced) == Some(at) {
                        return len > 0;
                    }
                    if len > 0 {
                        path.push('.');
                    }
                    path.push_str(&key.value.0);
                    find(value, at, path)
                }),
                Node::Seq(items) => items.iter().enumerate().any(|(i, item)| {
                    path.truncate(len);
                    path.push_str(&format!("[{i}]"));
                    find(item, at, path)
                }),
                Node::Scalar => false,
            };
            if !found {
                path.truncate(len);
            }
            found || (len > 0 && At::of(node.referenced) == Some(at))
        }
        let mut path = String::new();
        find(self.0.as_ref()?, at, &mut path).then_some(path)
    }

    fn node(&self, path: &str) -> Option<&Spanned<Node>> {
        let mut node = self.0.as_ref()?;
        for step in steps(path) {
            node = match (&node.value, step) {
                (Node::Map(entries), Step::Key(key)) => entries
                    .iter()
                    .find(|(k, _)| k.value.0 == key)
                    .map(|(_, v)| v)?,
                (Node::Seq(items), Step::Index(i)) => items.get(i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// Where the field at `path` (`spec.ingress[0].from[1].ipBlock.cidr`)
    /// starts; where its nearest enclosing node starts when the field itself
    /// is absent; `None` without any.
    pub fn locate(&self, path: &str) -> Option<At> {
        let mut node = self.0.as_ref()?;
        let mut at = At::of(node.referenced);
        for step in steps(path) {
            let next = match (&node.value, step) {
                (Node::Map(entries), Step::Key(key)) => entries
                    .iter()
                    .find(|(k, _)| k.value.0 == key)
                    .map(|(_, v)| v),
                (Node::Seq(items), Step::Index(i)) => items.get(i),
                _ => None,
            };
            let Some(next) = next else {
                break;
            };
            node = next;
            at = At::of(node.referenced).or(at);
        }
        at
    }
}

#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2][0].c` as keys and indices.
fn steps(path: &str) -> impl Iterator<Item = Step<'_>> {
    path.split('.').filter(|s| !s.is_empty()).flat_map(|part| {
        let mut pieces = part.split('[');
        let key = pieces.next().filter(|k| !k.is_empty()).map(Step::Key);
        let indices = pieces.filter_map(|i| i.trim_end_matches(']').parse().ok().map(Step::Index));
        key.into_iter().chain(indices)
    })
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML node")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Node::Map(entries))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping key as text; keys that are not scalars have no path.
#[derive(Debug)]
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_finds_its_node_or_the_nearest_enclosing_one() {
        let p = Positions::of(
            "spec:\n  ingress:\n  - from: [{podSelector: {}}, {ipBlock: {cidr: x}}]\n    ports:\n    - port: 80\n",
        );
        let at = |path| p.locate(path).map(|a| (a.line, a.column));
        assert_eq!(at("spec.ingress[0].from[1].ipBlock.cidr"), Some((3, 48)));
        assert_eq!(at("spec.ingress[0].ports[0].port"), Some((5, 13)));
        assert_eq!(at("spec.ingress[0].ports[0].endPort"), Some((5, 7)));
        assert_eq!(at("spec.egress[3]"), Some((2, 3)));
        assert_eq!(Positions::of("a: [").locate("a"), None);
        let found = |line, column| p.path_at(At { line, column });
        assert_eq!(
            found(5, 13).as_deref(),
            Some("spec.ingress[0].ports[0].port")
        );
        assert_eq!(
            found(3, 48).as_deref(),
            Some("spec.ingress[0].from[1].ipBlock.cidr")
        );
        assert_eq!(found(5, 12), None);
        assert_eq!(found(5, 7).as_deref(), Some("spec.ingress[0].ports[0]"));
    }

    #[test]
    fn faults_name_their_own_line_and_duplicates_and_alias_bombs_are_refused() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            #[serde(default)]
            a: Vec<serde_json::Value>,
        }
        let e = from_str::<T>("a:\n- 1\nb: 2\n").unwrap_err();
        assert_eq!(e.at, Some(At { line: 3, column: 1 }), "{e}");
        assert!(e.message.contains("unknown field `b`"), "{e}");
        let e = from_str::<T>("a: []\na: []\n").unwrap_err();
        assert_eq!(e.at.map(|a| a.line), Some(2), "{e}");
        assert!(e.message.contains("duplicate"), "{e}");
        let mut bomb = String::from("x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!(
                "x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        bomb.push_str("a: [*a11]\n");
        assert!(from_str::<serde_json::Value>(&bomb).is_err());
    }
}
