//! Errors: [`ConfigError`] at build time.

/// A configuration the library refuses to build, with what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A URL that must be https is not (loopback http is allowed for development).
    #[error("{what} must be an https URL (http is allowed only for loopback): {url}")]
    InsecureUrl {
        /// Which setting.
        what: &'static str,
        /// The offending URL.
        url: String,
    },
}
