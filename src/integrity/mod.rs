//! Tool integrity (feature `integrity`): what a server's tool definitions
//! say to the model.
//!
//! MCP clients put every tool's name, description and schema into the
//! model's context. A definition can carry instructions the user never sees
//! (tool poisoning), give rules for another tool (shadowing), or point the
//! model at local secrets and an address to send them to. The definitions
//! are the server author's, so this is where they can be checked before
//! anyone connects: [`scan`] them, and let a [`ScanPolicy`] decide at
//! start-up what refuses to serve (`secure_server` does), or call it from a
//! test. `examples/scan_tools.rs` scans a `tools/list` result from a file.
//!
//! A definition that changes after it was reviewed (a rug pull) is caught
//! by pinning: a [`DefinitionsLock`] written when the definitions are
//! reviewed, committed, and verified at start-up; its digest is published
//! ([`Guard::definitions_lock`](crate::Guard::definitions_lock)) so clients
//! can pin it too; [`Pinned`] enforces it while serving, hiding or refusing
//! a tool, prompt or resource template whose definition drifts at runtime.
//!
//! | file | concept |
//! |---|---|
//! | `scan` | [`scan`], [`Rule`], [`Severity`], [`Finding`], [`ScanPolicy`] |
//! | `lock` | [`DefinitionsLock`]: the definitions pinned by digest (rug pulls) |
//! | `pinned` | [`Pinned`]: at runtime, only the tools, prompts and resource templates the lock pins, as they are pinned |
//! | `arguments` | [`ArgumentGuard`]: arguments bounded and valid against the tool's schema before it runs |
//! | `redact` | [`OutputPolicy`], [`RedactionRule`]: what is removed from a result, and how it is found |
//! | `output` | [`OutputGuard`]: results leave without the secrets the tool read, nor credential-shaped text |
//!
//! What leaves is guarded too: an [`OutputGuard`] removes from each tool
//! result the exact values of the credentials the tool read during the
//! call (and their encodings), which no scanner outside the server can
//! know, and text shaped like a credential ([`RedactionRule`]).
//!
//! The rules are heuristics with documented severities ([`Rule`]); their
//! rates on a corpus of poisoned definitions and of definitions of widely
//! used public MCP servers are measured by `tests/integrity_scan.rs`.

mod arguments;
mod lock;
mod output;
mod pinned;
mod redact;
mod scan;

pub use arguments::{ArgumentGuard, ArgumentLimits, DEFAULT_MAX_ARGUMENT_BYTES};
pub use lock::{DEFINITIONS_LOCK_EXTENSION, DefinitionsLock, LOCK_VERSION, LockFileError, LockMismatch};
pub use output::OutputGuard;
pub use pinned::Pinned;
pub use redact::{DangerousOutputPolicy, MIN_SECRET_BYTES, OutputPolicy, RedactionRule};
pub use scan::{Action, Finding, Rule, ScanPolicy, ScanRefused, Severity, scan, scan_json};

/// The authenticated caller of an rmcp request, for audit events.
fn caller(context: &rmcp::service::RequestContext<rmcp::RoleServer>) -> Option<&crate::principal::Principal> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<crate::principal::Principal>())
        .or_else(|| context.extensions.get::<crate::principal::Principal>())
}
