//! A probe's `expect:` (docs/SCENARIOS.md "Tables"): a reachability table
//! (rows = from, columns = to) or the `all:` form with exceptions.

use std::{collections::BTreeMap, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Cell {
    /// `.`: a connection, request/reply or association completes.
    Reachable,
    /// `X`: no answer within the timeout, and Palisade reported the drop.
    Blocked,
    /// `R`: the target refused (a TCP reset, an ICMP port unreachable for
    /// UDP, an SCTP abort): the probe got past every enforcer to a port
    /// where nothing listens. An extension of the format: older files never
    /// use it.
    Refused,
    /// `-`
    Unchecked,
}

impl Cell {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "." => Some(Self::Reachable),
            "X" => Some(Self::Blocked),
            "R" => Some(Self::Refused),
            "-" => Some(Self::Unchecked),
            _ => None,
        }
    }

    pub const fn symbol(self) -> char {
        match self {
            Self::Reachable => '.',
            Self::Blocked => 'X',
            Self::Refused => 'R',
            Self::Unchecked => '-',
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    Table {
        columns: Vec<String>,
        rows: Vec<(String, Vec<Cell>)>,
    },
    All {
        all: Cell,
        /// `(from, to, cell)`
        except: Vec<(String, String, Cell)>,
    },
}

/// One cell to check: from a pod (`ns/name`) to a pod or an external.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub from: String,
    pub to: String,
    pub cell: Cell,
}

impl Expect {
    /// Parses the text form: a header line of columns, then one line per row.
    pub fn parse_table(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let columns: Vec<String> = lines
            .next()
            .ok_or("the table is empty")?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let mut rows = Vec::new();
        for line in lines {
            let mut words = line.split_whitespace();
            let from = words.next().unwrap_or_default().to_owned();
            let cells = words
                .map(|w| {
                    Cell::parse(w).ok_or_else(|| {
                        format!("row {from}: cell {w:?} is not `.`, `X`, `R` or `-`")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if cells.len() != columns.len() {
                return Err(format!(
                    "row {from} has {} cells for {} columns",
                    cells.len(),
                    columns.len()
                ));
            }
            if rows.iter().any(|(r, _)| *r == from) {
                return Err(format!("row {from} appears twice"));
            }
            rows.push((from, cells));
        }
        if rows.is_empty() {
            return Err("the table has a header but no rows".into());
        }
        let mut seen = Vec::new();
        for c in &columns {
            if seen.contains(&c) {
                return Err(format!("column {c} appears twice"));
            }
            seen.push(c);
        }
        Ok(Self::Table { columns, rows })
    }

    /// Every checked or unchecked cell, in table order. `pods` are the rows
    /// the `all:` form covers; `targets` its columns (pods and externals).
    /// A pod to itself is never checked (it never leaves the pod).
    pub fn cells(&self, pods: &[String], targets: &[String]) -> Result<Vec<Expected>, String> {
        let known_from = |n: &String| {
            if pods.contains(n) {
                Ok(())
            } else {
                Err(format!("{n} is not a pod of this scenario (rows are pods)"))
            }
        };
        let known_to = |n: &String| {
            if targets.contains(n) {
                Ok(())
            } else {
                Err(format!("{n} is not a pod or external of this scenario"))
            }
        };
        let mut out = Vec::new();
        match self {
            Self::Table { columns, rows } => {
                columns.iter().try_for_each(known_to)?;
                for (from, cells) in rows {
                    known_from(from)?;
                    for (to, cell) in columns.iter().zip(cells) {
                        out.push(Expected {
                            from: from.clone(),
                            to: to.clone(),
                            cell: *cell,
                        });
                    }
                }
            }
            Self::All { all, except } => {
                let mut overrides = BTreeMap::new();
                for (from, to, cell) in except {
                    known_from(from)?;
                    known_to(to)?;
                    if overrides.insert((from, to), *cell).is_some() {
                        return Err(format!("except lists {from} -> {to} twice"));
                    }
                }
                for from in pods {
                    for to in targets {
                        out.push(Expected {
                            from: from.clone(),
                            to: to.clone(),
                            cell: overrides.get(&(from, to)).copied().unwrap_or(*all),
                        });
                    }
                }
            }
        }
        for e in &mut out {
            if e.from == e.to {
                e.cell = Cell::Unchecked;
            }
        }
        Ok(out)
    }
}

fn cell_of<E: de::Error>(s: &str) -> Result<Cell, E> {
    Cell::parse(s).ok_or_else(|| E::custom(format!("cell {s:?} is not `.`, `X`, `R` or `-`")))
}

/// `"x/a -> y/b"`
fn pair_of<E: de::Error>(s: &str) -> Result<(String, String), E> {
    let (from, to) = s
        .split_once("->")
        .ok_or_else(|| E::custom(format!("except entry {s:?} is not \"from -> to\"")))?;
    Ok((from.trim().to_owned(), to.trim().to_owned()))
}

/// `except:` as a list of one-entry maps, or as one map.
#[derive(Deserialize)]
#[serde(untagged)]
enum Except {
    List(Vec<BTreeMap<String, String>>),
    Map(BTreeMap<String, String>),
}

impl<'de> Deserialize<'de> for Expect {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Expect;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table (`expect: |2`) or a map with `all:` and `except:`")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Expect, E> {
                Expect::parse_table(s).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Expect, A::Error> {
                let (mut all, mut except) = (None, Vec::new());
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "all" => all = Some(cell_of(&map.next_value::<String>()?)?),
                        "except" => {
                            let entries = match map.next_value::<Except>()? {
                                Except::List(l) => l.into_iter().flatten().collect(),
                                Except::Map(m) => m.into_iter().collect::<Vec<_>>(),
                            };
                            for (pair, cell) in entries {
                                let (from, to) = pair_of(&pair)?;
                                except.push((from, to, cell_of(&cell)?));
                            }
                        }
                        other => return Err(de::Error::unknown_field(other, &["all", "except"])),
                    }
                }
                let all = all.ok_or_else(|| de::Error::missing_field("all"))?;
                Ok(Expect::All { all, except })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_table_with_an_indented_header_reads_rows_and_columns() {
        let yaml = "expect: |2\n            x/a  x/b  ext1\n    x/a      -    .    X\n    x/b      X    -    R\n";
        #[derive(Deserialize)]
        struct P {
            expect: Expect,
        }
        let p: P = palisade::model::yaml::from_str(yaml).unwrap();
        let cells = p
            .expect
            .cells(&names(&["x/a", "x/b"]), &names(&["x/a", "x/b", "ext1"]))
            .unwrap();
        let checked: Vec<_> = cells
            .iter()
            .filter(|c| c.cell != Cell::Unchecked)
            .map(|c| format!("{}>{}{}", c.from, c.to, c.cell.symbol()))
            .collect();
        assert_eq!(checked, ["x/a>x/b.", "x/a>ext1X", "x/b>x/aX", "x/b>ext1R"]);
    }

    #[test]
    fn the_all_form_applies_exceptions_and_never_checks_a_pod_to_itself() {
        #[derive(Deserialize)]
        struct P {
            expect: Expect,
        }
        let p: P = palisade::model::yaml::from_str(
            "expect: {all: \".\", except: [{\"x/a -> x/b\": X}, {\"x/b -> x/b\": X}]}",
        )
        .unwrap();
        let cells = p
            .expect
            .cells(&names(&["x/a", "x/b"]), &names(&["x/a", "x/b"]))
            .unwrap();
        let symbols: String = cells.iter().map(|c| c.cell.symbol()).collect();
        assert_eq!(symbols, "-X.-");
    }

    #[test]
    fn bad_tables_say_what_is_wrong() {
        for (text, wanted) in [
            ("  x/a\nx/a . .\n", "2 cells for 1 columns"),
            ("  x/a\nx/a o\n", "is not `.`"),
            ("  x/a x/a\nx/b . .\n", "appears twice"),
            ("  x/a\n", "no rows"),
        ] {
            let e = Expect::parse_table(text).unwrap_err();
            assert!(e.contains(wanted), "{text:?}: {e}");
        }
        let t = Expect::parse_table("  x/q\nx/a .\n").unwrap();
        let e = t.cells(&names(&["x/a"]), &names(&["x/a"])).unwrap_err();
        assert!(e.contains("x/q"), "{e}");
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct P {
            expect: Expect,
        }
        let e =
            palisade::model::yaml::from_str::<P>("expect:\n  all: X\n  exept: []\n").unwrap_err();
        assert!(e.to_string().contains("exept"), "{e}");
        // The misspelt key's own line, not its map's.
        assert_eq!(e.at.map(|a| a.line), Some(3), "{e}");
    }
}
