//! Palisade's own kinds on the standard model: Deny, priorities, the admin
//! and baseline tiers, Pass, and audit mode, as the README's precedence
//! table states them.

use ebpf_common::datapath::{action, direction, policy_flags};

use super::{compile, evaluate, tests_common::*};

const NP_X_A_FROM_Y: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-y}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}]\n";

#[test]
fn a_namespaced_deny_beats_an_allow_of_the_same_priority() {
    let s = with(&format!(
        "{NP_X_A_FROM_Y}---\napiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: no-y-b}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{action: Deny, from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
    ));
    check(&s, "x/a", TCP, 80, &["y/a", "y/c"]);
}

#[test]
fn a_lower_priority_number_comes_first() {
    // An allow at 500 is evaluated before the deny at the default 1000.
    let s = with(&format!(
        "{NP_X_A_FROM_Y}---\napiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: no-y}}\nspec:\n  podSelector: {{}}\n  ingress: [{{action: Deny, from: [{{namespaceSelector: {{matchLabels: {{ns: \"y\"}}}}}}]}}]\n---\napiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {{name: but-y-c-on-80}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  priority: 500\n  ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{pod: c}}}}}}], ports: [{{port: 80}}]}}]\n"
    ));
    check(&s, "x/a", TCP, 80, &["x/c", "y/c", "z/c"]);
    check(&s, "x/a", TCP, 81, &[]);
    // x/b is isolated by no-y (empty podSelector): x and z may not reach it either.
    check(&s, "x/b", TCP, 80, &[]);
}

#[test]
fn admin_deny_overrides_networkpolicy_and_pass_hands_back() {
    // Within a tier, order is by priority only (then Deny, Pass, Allow), not
    // by the position of a rule in its policy: the Pass needs a lower number.
    let admin = "apiVersion: palisade.dev/v1alpha1\nkind: PalisadeClusterNetworkPolicy\nmetadata: {name: admin-pass}\nspec:\n  priority: 5\n  subject: {namespaceSelector: {matchLabels: {ns: x}}}\n  ingress:\n  - {action: Pass, from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: a}}}]}\n---\napiVersion: palisade.dev/v1alpha1\nkind: PalisadeClusterNetworkPolicy\nmetadata: {name: admin-deny}\nspec:\n  priority: 10\n  subject: {namespaceSelector: {matchLabels: {ns: x}}}\n  ingress:\n  - {action: Deny, from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]}\n";
    let s = with(&format!("{NP_X_A_FROM_Y}---\n{admin}"));
    // y/b, y/c denied by the admin tier despite the NetworkPolicy; y/a passed
    // down to the NetworkPolicy, which allows it.
    check(&s, "x/a", TCP, 80, &["y/a"]);
    // x/b has no NetworkPolicy: y/a passes down and nothing isolates it.
    check(
        &s,
        "x/b",
        TCP,
        80,
        &["x/a", "x/c", "y/a", "z/a", "z/b", "z/c"],
    );
}

#[test]
fn baseline_applies_only_where_no_networkpolicy_isolates() {
    let baseline = "apiVersion: palisade.dev/v1alpha1\nkind: PalisadeClusterNetworkPolicy\nmetadata: {name: baseline}\nspec:\n  tier: Baseline\n  ingress: [{action: Deny, from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n";
    let s = with(&format!("{NP_X_A_FROM_Y}---\n{baseline}"));
    check(&s, "x/a", TCP, 80, &["y/a", "y/b", "y/c"]);
    // Not isolated: the baseline denies z, everyone else gets in.
    check(&s, "x/b", TCP, 80, &["x/a", "x/c", "y/a", "y/b", "y/c"]);
}

#[test]
fn audit_policies_drop_nothing_and_flag_what_they_would_drop() {
    let audit = "apiVersion: palisade.dev/v1alpha1\nkind: PalisadeNetworkPolicy\nmetadata: {name: audit-deny-all}\nspec:\n  podSelector: {matchLabels: {pod: b}}\n  mode: Audit\n  policyTypes: [Ingress]\n  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]\n";
    let s = with(audit);
    check(&s, "x/b", TCP, 80, EVERYONE_BUT_SELF);
    let c = compile(&s);
    let ep = &c.endpoints["x/b"];
    let id = |k: &str| evaluate::identity_of(&c, pod(&s, k).ips[0]);
    let from_y_a = evaluate::matching(ep, direction::INGRESS, id("y/a"), TCP, 80).unwrap();
    assert_eq!(from_y_a.value.action, action::DENY);
    assert_ne!(
        from_y_a.value.flags & policy_flags::AUDIT,
        0,
        "flagged as audit"
    );
    assert_eq!(
        from_y_a.value.policy,
        c.policies["palisade:x/audit-deny-all"]
    );
    let from_x_c = evaluate::matching(ep, direction::INGRESS, id("x/c"), TCP, 80).unwrap();
    assert_eq!(
        from_x_c.value.action,
        action::ALLOW,
        "the audit policy allows x/c"
    );
}

#[test]
fn cluster_policies_select_by_namespace_and_pod_and_do_not_isolate() {
    let admin = "apiVersion: palisade.dev/v1alpha1\nkind: PalisadeClusterNetworkPolicy\nmetadata: {name: web-only}\nspec:\n  subject: {podSelector: {matchLabels: {pod: c}}}\n  ingress: [{action: Allow, from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}]}]\n";
    let s = with(admin);
    // An Allow in the admin tier alone isolates nothing.
    check(&s, "y/c", TCP, 81, EVERYONE_BUT_SELF);
    let deny = admin.replace("Allow", "Deny");
    let s = with(&deny);
    // A podSelector-only peer of a cluster policy means every namespace.
    check(&s, "y/c", TCP, 80, &["x/b", "x/c", "y/b", "z/b", "z/c"]);
    check(&s, "y/b", TCP, 80, EVERYONE_BUT_SELF);
}
