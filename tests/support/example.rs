//! The example programs `cargo test` builds, to run as a user does.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

/// `target/<profile>/examples/<name>`, built by `cargo test`; panics saying
/// how to build it when it is missing.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile_dir.join("examples").join(name);
    assert!(
        binary.exists(),
        "{} is missing: `cargo test` builds the examples; for this test alone run \
         `cargo build --example {name}` first",
        binary.display()
    );
    binary
}
