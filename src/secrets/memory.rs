//! [`MemoryStore`]: secrets held in process memory, for development, tests
//! and the quickstart.

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future;

use super::{Secret, SecretError, SecretStore, StoreFuture};

/// A [`SecretStore`] backed by a map in memory.
///
/// Paths are the resolved paths (`mcp/acme/catalyst-center`), without a mount.
/// It counts reads, so tests can prove what the cache saved.
///
/// ```
/// use rmcp_guard::secrets::{MemoryStore, SecretStore};
///
/// # tokio_test_block_on(async {
/// let store = MemoryStore::new()
///     .with("mcp/acme/catalyst-center", [("username", "acme-bot"), ("password", "demo")]);
/// let secret = store.get("mcp/acme/catalyst-center").await.unwrap();
/// assert_eq!(secret.expose("username"), Some("acme-bot"));
/// assert_eq!(store.reads(), 1);
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Default)]
pub struct MemoryStore {
    secrets: RwLock<HashMap<String, Secret>>,
    reads: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a secret at `path` (builder style).
    pub fn with<I, K, V>(self, path: impl Into<String>, fields: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.insert(path, Secret::new(fields));
        self
    }

    /// Put a secret at `path`, replacing what was there.
    pub fn insert(&self, path: impl Into<String>, secret: Secret) {
        self.write().insert(path.into(), secret);
    }

    /// Remove the secret at `path`.
    pub fn remove(&self, path: &str) -> Option<Secret> {
        self.write().remove(path)
    }

    /// How many times [`SecretStore::get`] was called.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Secret>> {
        // A poisoned lock only means a writer panicked mid-insert of a whole
        // value; the map itself is consistent.
        crate::cache::write(&self.secrets)
    }
}

impl SecretStore for MemoryStore {
    fn get<'a>(&'a self, path: &'a str) -> StoreFuture<'a> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let found = crate::cache::read(&self.secrets).get(path).cloned();
        Box::pin(future::ready(found.ok_or(SecretError::NotFound)))
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secrets = crate::cache::read(&self.secrets);
        let mut paths: Vec<_> = secrets.keys().collect();
        paths.sort();
        f.debug_struct("MemoryStore")
            .field("paths", &paths)
            .field("reads", &self.reads())
            .finish()
    }
}
