//! Policy decision latency: `cargo bench --bench policy --no-default-features --features policy`.
//!
//! * `rbac/memo_hit`: steady state for the RBAC example (decision-relevant
//!   input seen before on this thread).
//! * `rbac/evaluate`: memo off, every decision runs the RVM.
//! * `rbac/evaluate_deny`: memo off, a denial (also evaluates the reasons
//!   and required-scopes rules).
//! * `rbac/decide_audited`: memo hit plus the audit event (no subscriber).
//! * `rbac/memo_hit_2_threads`: memo hits on two threads at once, per decision.
//! * `arguments/evaluate`: a policy that reads `input.arguments` (never memoized).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rmcp_guard::Principal;
use rmcp_guard::policy::{Action, PolicyEngine, PolicyInput, RBAC_TOOL_SCOPE};

fn principal(groups: &[&str]) -> Principal {
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), "alice".into());
    claims.insert("groups".into(), serde_json::json!(groups));
    claims.insert("email".into(), "alice@example.com".into());
    Principal::unverified("https://idp.example.com", "alice")
        .groups(groups.iter().copied())
        .scopes([RBAC_TOOL_SCOPE, "openid", "profile"])
        .tenant("acme")
        .client_id("claude-desktop")
        .claims(claims)
        .build()
}

fn bench(c: &mut Criterion) {
    let memo = PolicyEngine::rbac_example().unwrap();
    let plain = PolicyEngine::rbac_example_builder()
        .unwrap()
        .memoize(false)
        .build()
        .unwrap();
    let engineer = principal(&["network-engineers"]);
    let allow = PolicyInput::new(&engineer, "deploy_template", Action::CallTool)
        .with_arguments(serde_json::json!({"template_id": "t-1", "device_id": "d-9"}));
    let deny = PolicyInput::new(&engineer, "create_ticket", Action::CallTool);
    assert!(memo.evaluate(&allow).allowed());
    assert!(!plain.evaluate(&deny).allowed());

    let mut g = c.benchmark_group("rbac");
    g.bench_function("memo_hit", |b| {
        b.iter(|| black_box(memo.evaluate(black_box(&allow)).allowed()))
    });
    g.bench_function("evaluate", |b| {
        b.iter(|| black_box(plain.evaluate(black_box(&allow)).allowed()))
    });
    g.bench_function("evaluate_deny", |b| {
        b.iter(|| black_box(plain.evaluate(black_box(&deny)).allowed()))
    });
    g.bench_function("decide_audited", |b| {
        b.iter(|| black_box(memo.decide(black_box(&allow)).allowed()))
    });
    // Two threads deciding at once (2 cores here): time per decision across
    // both. With no shared lock on the hot path this is about half of
    // `memo_hit`; a global lock would make it slower than `memo_hit`.
    g.bench_function("memo_hit_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters / 2 {
                            black_box(memo.evaluate(black_box(&allow)).allowed());
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    g.finish();

    let args = PolicyEngine::builder()
        .module(
            "args.rego",
            "package mcp.authz\ndefault allow := false\nallow if { input.action == \"tools/call\"; input.arguments.amount < 100 }",
        )
        .build()
        .unwrap();
    let pay = PolicyInput::new(&engineer, "pay", Action::CallTool).with_arguments(serde_json::json!({"amount": 5}));
    c.bench_function("arguments/evaluate", |b| {
        b.iter(|| black_box(args.evaluate(black_box(&pay)).allowed()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
