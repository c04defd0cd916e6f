//! `labelSelector` and `fieldSelector`, parsed as the real API server
//! parses them: the same operators, the same refusals of what it refuses
//! (an unsupported field, an empty set), so that a selector a client gets
//! wrong fails here rather than first in a cluster.

use serde_json::{Map, Value};

use super::resources::Resource;

/// Both selectors of a request; the empty one matches everything.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

#[derive(Clone, Debug, PartialEq)]
enum LabelOp {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

#[derive(Clone, Debug, PartialEq)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
}

#[derive(Clone, Debug, PartialEq)]
struct FieldRequirement {
    field: String,
    equal: bool,
    value: String,
}

impl Selector {
    /// Parses both, each `None` or empty for no constraint.
    pub fn parse(
        resource: &Resource,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Self, String> {
        Ok(Selector {
            labels: parse_labels(labels.unwrap_or(""))?,
            fields: parse_fields(resource, fields.unwrap_or(""))?,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        self.labels.iter().all(|r| r.matches(labels))
            && self
                .fields
                .iter()
                .all(|r| (field_value(object, &r.field) == r.value) == r.equal)
    }
}

impl LabelRequirement {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let value = labels
            .and_then(|l| l.get(&self.key))
            .and_then(Value::as_str);
        match (&self.op, value) {
            (LabelOp::Exists, v) => v.is_some(),
            (LabelOp::DoesNotExist, v) => v.is_none(),
            (LabelOp::Equals(want), Some(v)) => v == want,
            (LabelOp::In(set), Some(v)) => set.iter().any(|s| s == v),
            // A missing label is "not equal" and "not in", as in the real one.
            (LabelOp::NotEquals(want), v) => v != Some(want.as_str()),
            (LabelOp::NotIn(set), v) => v.is_none_or(|v| set.iter().all(|s| s != v)),
            (LabelOp::GreaterThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v > *n),
            (LabelOp::LessThan(n), Some(v)) => v.parse::<i64>().is_ok_and(|v| v < *n),
            (_, None) => false,
        }
    }
}

/// What a field selector compares: strings as they are, numbers and
/// booleans as their text, a missing field as "".
fn field_value(object: &Value, field: &str) -> String {
    let pointer = format!("/{}", field.replace('.', "/"));
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(v @ (Value::Bool(_) | Value::Number(_))) => v.to_string(),
        _ => String::new(),
    }
}

/// Splits on commas that are not inside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in {s:?}"))?;
            }
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced '(' in {s:?}"));
    }
    terms.push(&s[start..]);
    Ok(terms)
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn check_value(value: &str) -> Result<String, String> {
    let ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!("invalid label value: {value:?}"))
    }
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a set in parentheses, found {rest:?}"))?;
    let values = inner
        .split(',')
        .map(|v| check_value(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if values.iter().all(String::is_empty) {
        return Err("for 'in', 'notin' operators, values set can't be empty".to_owned());
    }
    Ok(values)
}

/// A word operator (`in`, `notin`) must be followed by a space or the set.
fn strip_word<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    rest.strip_prefix(word)
        .filter(|r| r.starts_with(|c: char| c.is_whitespace() || c == '('))
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, String> {
    let term = term.trim();
    let (negated, term) = match term.strip_prefix('!') {
        Some(t) => (true, t.trim_start()),
        None => (false, term),
    };
    let end = term.find(|c| !is_key_char(c)).unwrap_or(term.len());
    let (key, rest) = term.split_at(end);
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
        return Err(format!("invalid label key in {term:?}"));
    }
    let key = key.to_owned();
    let rest = rest.trim_start();
    if negated {
        return if rest.is_empty() {
            Ok(LabelRequirement {
                key,
                op: LabelOp::DoesNotExist,
            })
        } else {
            Err(format!("unexpected {rest:?} after !{key}"))
        };
    }
    let number = |v: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| format!("for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"))
    };
    let op = if rest.is_empty() {
        LabelOp::Exists
    } else if let Some(v) = rest.strip_prefix("!=") {
        LabelOp::NotEquals(check_value(v.trim())?)
    } else if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        LabelOp::Equals(check_value(v.trim())?)
    } else if let Some(v) = rest.strip_prefix('>') {
        LabelOp::GreaterThan(number(v)?)
    } else if let Some(v) = rest.strip_prefix('<') {
        LabelOp::LessThan(number(v)?)
    } else if let Some(set) = strip_word(rest, "in") {
        LabelOp::In(parse_set(set)?)
    } else if let Some(set) = strip_word(rest, "notin") {
        LabelOp::NotIn(parse_set(set)?)
    } else {
        return Err(format!("unknown operator in {term:?}"));
    };
    Ok(LabelRequirement { key, op })
}

fn parse_labels(s: &str) -> Result<Vec<LabelRequirement>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_terms(s)?.into_iter().map(parse_label_term).collect()
}

/// Splits on a separator that no backslash escapes, and unescapes.
fn split_escaped(s: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(last)) = (chars.next(), parts.last_mut()) {
                    last.push('\\');
                    last.push(next);
                }
            }
            c if c == separator => parts.push(String::new()),
            c => {
                if let Some(last) = parts.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// The first operator no backslash escapes: `!=`, `==` or `=`.
fn split_operator(term: &str) -> Option<(&str, bool, &str)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], false, &term[i + 2..]));
            }
            b'=' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], true, &term[i + 2..]));
            }
            b'=' => return Some((&term[..i], true, &term[i + 1..])),
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_fields(resource: &Resource, s: &str) -> Result<Vec<FieldRequirement>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_escaped(s, ',')
        .iter()
        .map(|term| {
            let (field, equal, value) = split_operator(term)
                .ok_or_else(|| format!("invalid selector: '{term}'; can't understand '{term}'"))?;
            let field = field.trim();
            if !resource.allows_field(field) {
                return Err(format!("field label not supported: {field}"));
            }
            Ok(FieldRequirement {
                field: field.to_owned(),
                equal,
                value: unescape(value),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pods() -> &'static Resource {
        Resource::by_path("", "v1", "pods").unwrap()
    }

    fn pod(labels: Value, node: &str) -> Value {
        json!({"metadata": {"name": "a", "namespace": "x", "labels": labels},
               "spec": {"nodeName": node}, "status": {"phase": "Running"}})
    }

    fn matches(labels: &str, fields: &str, object: &Value) -> bool {
        match Selector::parse(pods(), Some(labels), Some(fields)) {
            Ok(s) => s.matches(object),
            Err(e) => panic!("{labels:?} {fields:?}: {e}"),
        }
    }

    #[test]
    fn label_operators_match_as_in_kubernetes() {
        let p = pod(json!({"app": "web", "tier": "front", "n": "5"}), "n1");
        let bare = pod(json!({}), "n1");
        for (selector, on_p, on_bare) in [
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app = web", true, false),
            ("app!=web", false, true),
            ("app!=db", true, true),
            ("app in (web, db)", true, false),
            ("app in(db)", false, false),
            ("app notin (db)", true, true),
            ("app notin (web)", false, true),
            ("app", true, false),
            ("!app", false, true),
            ("! app", false, true),
            ("app=web,tier in (front),!missing", true, false),
            ("app=web,tier=back", false, false),
            ("n>4", true, false),
            ("n<5", false, false),
            ("example.com/role", false, false),
            ("app=", false, false),
        ] {
            assert_eq!(matches(selector, "", &p), on_p, "{selector:?} on labelled");
            assert_eq!(
                matches(selector, "", &bare),
                on_bare,
                "{selector:?} on bare"
            );
        }
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for bad in [
            "app in ()",
            "app in web",
            "app in (web",
            "app)",
            "=web",
            "app=w b",
            "app ~ web",
            "n>five",
            "!app=web",
            "app=web,,",
        ] {
            assert!(
                Selector::parse(pods(), Some(bad), None).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn field_selectors_compare_known_fields() {
        let p = pod(json!({}), "n1");
        for (selector, want) in [
            ("spec.nodeName=n1", true),
            ("spec.nodeName==n1", true),
            ("spec.nodeName!=n1", false),
            ("spec.nodeName=n2", false),
            ("metadata.name=a,metadata.namespace=x", true),
            ("metadata.namespace!=x", false),
            ("status.phase=Running", true),
            ("status.podIP=", true),
        ] {
            assert_eq!(matches("", selector, &p), want, "{selector:?}");
        }
        let err = Selector::parse(pods(), None, Some("spec.hostname=a"));
        assert_eq!(
            err.err().as_deref(),
            Some("field label not supported: spec.hostname")
        );
        assert!(Selector::parse(pods(), None, Some("spec.nodeName")).is_err());
        let namespaces = Resource::by_path("", "v1", "namespaces");
        assert!(
            namespaces.is_some_and(|r| Selector::parse(r, None, Some("spec.nodeName=n1")).is_err())
        );
    }

    #[test]
    fn field_values_may_escape_the_separators() {
        let p = json!({"metadata": {"name": "a,b=c"}});
        assert!(matches("", r"metadata.name=a\,b\=c", &p));
        assert!(!matches("", r"metadata.name=a", &p));
    }
}
