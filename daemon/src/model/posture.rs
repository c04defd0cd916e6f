//! A namespace's default postures for process and file rules, from
//! KubeArmor's annotations, so that a namespace annotated for KubeArmor
//! means the same under Palisade:
//!
//! - `kubearmor-file-posture: block | audit | allow` (default `audit`, as in
//!   KubeArmor) governs file rules and, unless the next one says otherwise,
//!   process rules too;
//! - `kubearmor-process-posture`, where present, sets the process side
//!   apart.
//!
//! A default applies only to a section that has no posture of its own and
//! only where the pod has an Allow rule in that section (see
//! `process_file.rs`): it is what happens to the unlisted.

use super::{Namespace, parse::Invalid};

pub const FILE_POSTURE_ANNOTATION: &str = "kubearmor-file-posture";
pub const PROCESS_POSTURE_ANNOTATION: &str = "kubearmor-process-posture";

/// What happens to an operation no Allow rule names, where Allow rules
/// exist.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DefaultPosture {
    Block,
    /// Allowed, and reported.
    #[default]
    Audit,
    Allow,
}

impl DefaultPosture {
    /// KubeArmor's spelling, lower case only, as it compares them.
    fn parse(value: &str) -> Option<Self> {
        match value {
            "block" => Some(Self::Block),
            "audit" => Some(Self::Audit),
            "allow" => Some(Self::Allow),
            _ => None,
        }
    }
}

/// The namespace's (file, process) default postures. A bad value is an
/// error naming the annotation.
pub fn namespace_postures(ns: &Namespace) -> Result<(DefaultPosture, DefaultPosture), Invalid> {
    let read = |annotation: &str| {
        ns.annotations
            .get(annotation)
            .map(|value| {
                DefaultPosture::parse(value).ok_or_else(|| {
                    Invalid::new(
                        format!("metadata.annotations.{annotation}"),
                        format!("{value:?} is not a posture: block, audit or allow"),
                    )
                })
            })
            .transpose()
    };
    let file = read(FILE_POSTURE_ANNOTATION)?.unwrap_or_default();
    let process = read(PROCESS_POSTURE_ANNOTATION)?.unwrap_or(file);
    Ok((file, process))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(annotations: &[(&str, &str)]) -> Namespace {
        Namespace {
            name: "x".into(),
            labels: Default::default(),
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn file_posture_governs_both_and_process_posture_sets_its_side_apart() {
        use DefaultPosture::*;
        let cases: [(&[(&str, &str)], _); 4] = [
            (&[], (Audit, Audit)),
            (&[(FILE_POSTURE_ANNOTATION, "block")], (Block, Block)),
            (
                &[
                    (FILE_POSTURE_ANNOTATION, "block"),
                    (PROCESS_POSTURE_ANNOTATION, "allow"),
                ],
                (Block, Allow),
            ),
            (
                &[
                    (PROCESS_POSTURE_ANNOTATION, "block"),
                    ("kubearmor-network-posture", "whatever"),
                ],
                (Audit, Block),
            ),
        ];
        for (annotations, want) in cases {
            assert_eq!(
                namespace_postures(&ns(annotations)).unwrap(),
                want,
                "{annotations:?}"
            );
        }
    }

    #[test]
    fn a_bad_value_names_its_annotation() {
        for annotation in [FILE_POSTURE_ANNOTATION, PROCESS_POSTURE_ANNOTATION] {
            for bad in ["Block", "deny", ""] {
                let e = namespace_postures(&ns(&[(annotation, bad)])).unwrap_err();
                assert_eq!(e.path, format!("metadata.annotations.{annotation}"));
                assert!(e.message.contains("block, audit or allow"), "{e}");
            }
        }
    }
}
