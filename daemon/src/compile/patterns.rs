//! Patterns (`matchPatterns`) as the kernel runs them: every pattern of a
//! rule set becomes a chain of states in one bit-parallel automaton
//! ([`ebpf_common::lsm::PatternSet`]), so that the kernel reads a path once
//! for all of a set's patterns, in time linear in the path, and never
//! backtracks. The step itself is shared with the kernel; a property test
//! holds the automaton to `model::glob::matches`, the reference.

use ebpf_common::lsm::{
    MAX_PATTERNS, PATTERN_ROUNDS, PATTERN_WORDS, PatternSet, PatternSlot, SlotChoice, Verdict,
};

use crate::model::glob::{Token, tokens};

/// One pattern of a set with its resolved verdict for reads and writes
/// (`rank` 0 where its rules do not cover the operation).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PatternRule {
    pub pattern: String,
    pub rank: [u8; 2],
    pub verdict: [Verdict; 2],
}

/// A [`Verdict`] as a sortable tuple: (action, flags, policy).
type VerdictKey = (u8, u8, u32);

impl PatternRule {
    fn key(&self) -> (&str, [u8; 2], [VerdictKey; 2]) {
        let v = |v: &Verdict| (v.action, v.flags, v.policy);
        (&self.pattern, self.rank, self.verdict.each_ref().map(v))
    }
}

impl PartialOrd for PatternRule {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PatternRule {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// States available to one set's patterns.
pub const MAX_STATES: usize = 64 * PATTERN_WORDS;

/// Why a pattern cannot join an automaton that already uses `used` states
/// and holds `count` patterns; `None` if it can.
pub fn refusal(pattern: &str, used: usize, count: usize) -> Option<String> {
    let t = tokens(pattern);
    if count >= MAX_PATTERNS {
        return Some(format!(
            "more than {MAX_PATTERNS} patterns apply to one pod's section: {pattern:?} and \
             those after it are left out"
        ));
    }
    if used + states(pattern) > MAX_STATES {
        return Some(format!(
            "the patterns of one pod's section need more than {MAX_STATES} states \
             (one per character or wildcard): {pattern:?} is left out"
        ));
    }
    if wildcard_run(&t) > PATTERN_ROUNDS as usize {
        return Some(format!(
            "{pattern:?} has more than {PATTERN_ROUNDS} wildcards in a row: it is left out"
        ));
    }
    None
}

/// States one pattern takes: one per token, two per `**/`, one for
/// "matched".
pub fn states(pattern: &str) -> usize {
    let t = tokens(pattern);
    t.len() + t.iter().filter(|&&x| x == Token::Dirs).count() + 1
}

fn skippable(t: Token) -> bool {
    matches!(t, Token::Star | Token::Globstar | Token::Dirs)
}

fn wildcard_run(t: &[Token]) -> usize {
    t.split(|&x| !skippable(x))
        .map(<[Token]>::len)
        .max()
        .unwrap_or(0)
}

fn set_bit(words: &mut [u64; PATTERN_WORDS], bit: usize) {
    words[bit / 64] |= 1 << (bit % 64);
}

/// The automaton of `rules`, which must each pass [`refusal`] in turn.
pub fn automaton(rules: &[PatternRule]) -> PatternSet {
    let mut a = PatternSet::empty();
    let mut base = 0;
    for (k, rule) in rules.iter().enumerate().take(MAX_PATTERNS) {
        let t = tokens(&rule.pattern);
        let mut bit = base;
        for token in &t {
            match *token {
                Token::Byte(c) => set_bit(&mut a.adv[c as usize], bit),
                Token::One => {
                    for c in (0..=255u8).filter(|&c| c != b'/') {
                        set_bit(&mut a.adv[c as usize], bit);
                    }
                }
                Token::Star => {
                    set_bit(&mut a.stay_other, bit);
                    set_bit(&mut a.eps, bit);
                }
                Token::Globstar => {
                    set_bit(&mut a.stay_other, bit);
                    set_bit(&mut a.stay_slash, bit);
                    set_bit(&mut a.eps, bit);
                }
                Token::Dirs => {
                    // Skipped whole, or entered: inside, anything up to a
                    // `/` that leaves.
                    set_bit(&mut a.skip, bit);
                    set_bit(&mut a.eps, bit);
                    bit += 1;
                    set_bit(&mut a.stay_other, bit);
                    set_bit(&mut a.stay_slash, bit);
                    set_bit(&mut a.adv[b'/' as usize], bit);
                }
            }
            bit += 1;
        }
        set_bit(&mut a.start, base);
        let done = bit;
        a.slots[k] = PatternSlot {
            word: (done / 64) as u8,
            bit: (done % 64) as u8,
            rank: rule.rank,
            _pad: [0; 4],
            verdict: rule.verdict,
        };
        a.count = k as u32 + 1;
        a.rounds = a.rounds.max(wildcard_run(&t) as u32);
        base = done + 1;
    }
    a.words = base.div_ceil(64).clamp(1, PATTERN_WORDS) as u32;
    let mut start = a.start;
    a.close(&mut start);
    a.start = start;
    a
}

/// A pattern slot that decided, and its verdict.
pub type Decided = Option<(usize, Verdict)>;

/// Runs `path` (its bytes, no NUL) through `a` as the kernel does: for
/// operation `which`, the deciding ordinary pattern (the highest rank,
/// the first of equals) and the strictest guard pattern, the latter for a
/// directory renamed (`renamed_dir`) only.
pub fn run(a: &PatternSet, path: &[u8], which: usize, renamed_dir: bool) -> (Decided, Decided) {
    let mut d = a.start;
    for &b in path {
        a.step(&mut d, b);
        if d == [0; PATTERN_WORDS] {
            return (None, None);
        }
    }
    let mut choice = SlotChoice::default();
    for k in 0..(a.count as usize).min(MAX_PATTERNS) {
        a.consider(k, &d, which, renamed_dir, &mut choice);
    }
    let (best, guard) = choice.verdicts();
    (
        best.map(|v| (usize::from(choice.best_slot), v)),
        guard.map(|v| (usize::from(choice.guard_slot), v)),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::glob::{check, matches};

    fn rule(pattern: &str, rank: u8, policy: u32) -> PatternRule {
        let v = Verdict {
            action: 2,
            flags: 0,
            _pad: [0; 2],
            policy,
        };
        PatternRule {
            pattern: pattern.into(),
            rank: [rank, rank],
            verdict: [v, v],
        }
    }

    fn matched(a: &PatternSet, path: &str) -> Vec<bool> {
        let mut d = a.start;
        for &b in path.as_bytes() {
            a.step(&mut d, b);
        }
        (0..a.count as usize)
            .map(|k| d[a.slots[k].word as usize] >> a.slots[k].bit & 1 != 0)
            .collect()
    }

    #[test]
    fn the_documented_cases_match_as_the_reference_says() {
        let patterns = [
            "/etc/*.conf",
            "/etc/?",
            "/tmp/**",
            "/**/shadow*",
            "/a/**/b",
            "/a/**b",
            "/*/*/x",
            "/a/**/**/*",
        ];
        let rules: Vec<_> = patterns.iter().map(|p| rule(p, 5, 1)).collect();
        let a = automaton(&rules);
        assert_eq!(a.count as usize, patterns.len());
        for path in [
            "/etc/a.conf",
            "/etc/x/a.conf",
            "/etc/a",
            "/etc/ab",
            "/tmp/a/b/c",
            "/tmpx/a",
            "/etc/shadow-",
            "/shadow",
            "/a/b",
            "/a/x/y/b",
            "/a/xb",
            "/a/x/yb",
            "/a/b/x",
            "/a/x",
            "/a/q/r/s",
        ] {
            let want: Vec<bool> = patterns.iter().map(|p| matches(p, path)).collect();
            assert_eq!(matched(&a, path), want, "{path}");
        }
    }

    #[test]
    fn the_highest_rank_decides_and_uncovered_operations_fall_through() {
        let mut audit = rule("/srv/**", 3, 7);
        audit.rank[1] = 0;
        let a = automaton(&[audit, rule("/srv/*.key", 5, 9), rule("/srv/a.key", 5, 11)]);
        let (slot, v) = run(&a, b"/srv/a.key", 0, false).0.unwrap();
        assert_eq!((slot, v.policy), (1, 9), "the first of equals");
        assert_eq!(run(&a, b"/srv/x/y", 0, false).0.unwrap().1.policy, 7);
        assert_eq!(
            run(&a, b"/srv/x/y", 1, false),
            (None, None),
            "not covered for writes"
        );
        assert_eq!(run(&a, b"/etc/passwd", 0, false), (None, None));
    }

    #[test]
    fn what_does_not_fit_is_refused_by_name() {
        let long = format!("/{}", "a".repeat(MAX_STATES));
        assert!(refusal(&long, 0, 0).unwrap().contains("states"));
        assert!(
            refusal("/a/*", 0, MAX_PATTERNS)
                .unwrap()
                .contains("patterns")
        );
        assert!(
            refusal("/a/**/**/**/**/*", 0, 0)
                .unwrap()
                .contains("in a row")
        );
        assert_eq!(refusal("/a/**/*", 0, 0), None);
    }

    fn segment() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "*", "?", "**"]), 1..4)
            .prop_map(|parts| parts.concat())
    }

    fn pattern() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..5)
            .prop_map(|segs| format!("/{}", segs.join("/")))
            .prop_filter("a pattern check() accepts", |p| {
                check(p).is_ok() && refusal(p, 0, 0).is_none()
            })
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec("[ab]{0,3}", 1..6).prop_map(|segs| format!("/{}", segs.join("/")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn the_automaton_agrees_with_the_reference(
            patterns in prop::collection::vec(pattern(), 1..5),
            paths in prop::collection::vec(path(), 1..8),
        ) {
            let rules: Vec<_> = patterns.iter().map(|p| rule(p, 5, 1)).collect();
            let a = automaton(&rules);
            for path in &paths {
                let want: Vec<bool> = patterns.iter().map(|p| matches(p, path)).collect();
                prop_assert_eq!(matched(&a, path), want, "{:?} ~ {}", patterns, path);
            }
        }
    }
}
