//! Path patterns of process and file rules (`patterns`, KubeArmor's
//! `matchPatterns`): absolute paths with three wildcards, and nothing else,
//! so that a pattern means the same to the validator, the compiler and a
//! reader:
//!
//! - `?` one character other than `/`;
//! - `*` any run of characters other than `/` (within one component);
//! - `**` any run of characters, `/` included (any depth); as a whole
//!   component followed by `/` (`/a/**/b`) it also matches no directory at
//!   all (`/a/b`).
//!
//! KubeArmor documents its patterns as AppArmor's globs, which also have
//! `[...]`, `{a,b}` and `\` escapes: those are refused by name rather than
//! read as literal characters, which would silently match nothing.

use super::process_file::MAX_RULE_PATH;

/// Characters that are glob syntax elsewhere but not here.
const UNSUPPORTED: &[char] = &['[', ']', '{', '}', '\\'];

/// Whether `pattern` is a pattern Palisade accepts; the reason when not.
pub fn check(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('/') {
        return Err(format!("{pattern:?} is not an absolute pattern"));
    }
    if pattern.len() > MAX_RULE_PATH || pattern.contains('\0') {
        return Err(format!(
            "{pattern:?} is longer than {MAX_RULE_PATH} bytes or contains NUL"
        ));
    }
    if let Some(c) = pattern.chars().find(|c| UNSUPPORTED.contains(c)) {
        return Err(format!(
            "{pattern:?}: `{c}` is not supported; patterns know `*`, `?` and `**` only"
        ));
    }
    if pattern.contains("***") {
        return Err(format!("{pattern:?}: more than two `*` in a row"));
    }
    if pattern.ends_with('/') {
        return Err(format!(
            "{pattern:?}: a pattern matches files and must not end in '/' (use `dir/**`)"
        ));
    }
    if pattern[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "{pattern:?} is not normalised (empty, '.' or '..' component)"
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    Byte(u8),
    One,
    Star,
    Globstar,
    /// `**/` as a whole component: zero or more whole directories.
    Dirs,
}

/// A pattern [`check`] accepts, token by token.
pub fn tokens(pattern: &str) -> Vec<Token> {
    let b = pattern.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let (token, len) = match b[i] {
            b'*' if b.get(i + 1) == Some(&b'*') => {
                let whole = i > 0 && b[i - 1] == b'/' && b.get(i + 2) == Some(&b'/');
                if whole {
                    (Token::Dirs, 3)
                } else {
                    (Token::Globstar, 2)
                }
            }
            b'*' => (Token::Star, 1),
            b'?' => (Token::One, 1),
            c => (Token::Byte(c), 1),
        };
        out.push(token);
        i += len;
    }
    out
}

/// Whether `path` matches `pattern` (a pattern [`check`] accepts). A set of
/// reachable positions per token: linear in the pattern times the path,
/// whatever the wildcards.
pub fn matches(pattern: &str, path: &str) -> bool {
    let s = path.as_bytes();
    let mut reach = vec![false; s.len() + 1];
    reach[0] = true;
    for token in tokens(pattern) {
        let mut next = vec![false; s.len() + 1];
        let mut seen = false;
        for j in 0..=s.len() {
            let prev = j.checked_sub(1).map(|k| s[k]);
            next[j] = match token {
                Token::Byte(c) => j > 0 && reach[j - 1] && prev == Some(c),
                Token::One => j > 0 && reach[j - 1] && prev != Some(b'/'),
                Token::Star => reach[j] || (j > 0 && next[j - 1] && prev != Some(b'/')),
                Token::Globstar => reach[j] || (j > 0 && next[j - 1]),
                Token::Dirs => reach[j] || (seen && prev == Some(b'/')),
            };
            seen |= reach[j];
        }
        reach = next;
    }
    reach[s.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_normalised_patterns_of_three_wildcards_pass() {
        for good in [
            "/etc/*.conf",
            "/**/shadow*",
            "/home/*/.ssh/id_?sa",
            "/tmp/**",
        ] {
            assert!(check(good).is_ok(), "{good}: {:?}", check(good));
        }
        for (bad, why) in [
            ("etc/*", "absolute"),
            ("/etc/[ab]", "`[`"),
            ("/etc/{a,b}", "`{`"),
            ("/etc/\\*", "`\\`"),
            ("/etc/***", "in a row"),
            ("/etc/*/", "end in"),
            ("/etc/../*", "normalised"),
            ("/etc//*", "normalised"),
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check(&format!("/{}", "a".repeat(MAX_RULE_PATH))).is_err());
    }

    #[test]
    fn wildcards_match_as_documented() {
        let cases = [
            ("/etc/*.conf", "/etc/a.conf", true),
            ("/etc/*.conf", "/etc/x/a.conf", false),
            ("/etc/?", "/etc/a", true),
            ("/etc/?", "/etc/ab", false),
            ("/etc/?", "/etc//", false),
            ("/tmp/**", "/tmp/a/b/c", true),
            ("/tmp/**", "/tmpx/a", false),
            ("/**/shadow*", "/etc/shadow-", true),
            ("/**/shadow*", "/shadow", true),
            ("/a/**/b", "/a/b", true),
            ("/a/**/b", "/a/x/y/b", true),
            ("/a/**/b", "/a/xb", false),
            ("/a/**b", "/a/x/yb", true),
            ("/bin/sh", "/bin/sh", true),
            ("/bin/sh", "/bin/bash", false),
            ("/*/*/x", "/a/b/x", true),
            ("/*/*/x", "/a/x", false),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(matches(pattern, path), want, "{pattern} ~ {path}");
        }
    }
}
