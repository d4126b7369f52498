//! `#[require_permission]`: what compiles, and the exact errors for misuse.
#![cfg(feature = "macros")]

#[test]
fn require_permission_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
