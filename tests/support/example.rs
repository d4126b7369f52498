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

/// A free loopback port, for a program that must be told its address
/// before it starts (the resource URI names it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A fresh directory for `name`'s files (logs, configuration) under the
/// system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rmcp-guard-{name}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
