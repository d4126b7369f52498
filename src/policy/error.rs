//! [`PolicyError`]: why a policy does not load, under
//! [`ConfigError::Policy`](crate::ConfigError::Policy).

/// Why a policy does not load: the server does not start, a reload keeps the
/// previous policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// No Rego module was given to the policy engine.
    #[error("no Rego policy module was loaded")]
    Empty,
    /// A policy file or directory could not be read.
    #[error("cannot read policy source {path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// A Rego module does not parse or compile (as Rego v1 nor as v0).
    #[error("policy module {module} does not compile: {message}")]
    Compile {
        /// The module's file name or given name.
        module: String,
        /// The compiler's message, with the position.
        message: String,
    },
    /// A data document is not a JSON object, or conflicts with another one.
    #[error("policy data document {document} is invalid: {message}")]
    Data {
        /// The document's file name or given name.
        document: String,
        /// What is wrong with it.
        message: String,
    },
    /// The configured entrypoint rule is declared by no loaded module.
    #[error("policy entrypoint {entrypoint} is not declared by any loaded module")]
    Entrypoint {
        /// The rule path, e.g. `data.mcp.authz.allow`.
        entrypoint: String,
    },
    /// The policy compiled but its smoke evaluation did not yield a boolean.
    #[error("policy failed its smoke evaluation: {message}")]
    Smoke {
        /// What the evaluation returned or why it failed.
        message: String,
    },
}
