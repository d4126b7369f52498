//! `oidc-provider` (npm, `tests/oidc-provider/server.js`): a real OAuth
//! authorization server on a loopback port, for the introspection,
//! third-party and DPoP interop tests.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running provider; stopped when dropped.
pub struct OidcProvider {
    child: Child,
    /// Its issuer, `http://127.0.0.1:<port>`.
    pub issuer: String,
}

impl OidcProvider {
    /// Start it with one confidential client and the extra environment
    /// `vars` (`ACCESS_TOKEN_FORMAT=jwt`, `DPOP_NONCE=1`, ...); ready when
    /// it printed its issuer.
    pub fn start(client_id: &str, client_secret: &str, vars: &[(&str, &str)]) -> OidcProvider {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider");
        assert!(
            dir.join("node_modules/oidc-provider/package.json").exists(),
            "oidc-provider is not installed: run `npm ci --prefix tests/oidc-provider` (needs Node 20+ and npm)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("server.js"))
            .env("CLIENT_ID", client_id)
            .env("CLIENT_SECRET", client_secret)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node 20+"));
        let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("the provider's first line");
        // Keep draining: a closed pipe would kill node at its next write.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let issuer = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("oidc-provider did not start: {line:?}"))
            .to_owned();
        OidcProvider { child, issuer }
    }

    /// Stop it now (the tests of an unreachable provider).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}
