//! [`ReadSecrets`]: the secret values one tool call read, for the output
//! guard that removes them from the call's result.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::Secret;

/// The most distinct secrets one call records. A call that reads more has
/// its result withheld by the output guard (fail closed: a value that is
/// not recorded could not be removed).
pub(crate) const MAX_READ_PER_CALL: usize = 256;

/// The secrets read during one tool call, through [`CallerCredentials`]
/// (and the tokens obtained through `DownstreamTokens`): the output guard
/// puts a fresh ledger into each `tools/call`'s rmcp extensions, the
/// extractors find it there and record every value they hand out, and the
/// guard removes those values from the result. Cheap to clone (one
/// reference count); bounded at [`MAX_READ_PER_CALL`] secrets.
///
/// [`CallerCredentials`]: super::CallerCredentials
#[derive(Clone, Default)]
pub(crate) struct ReadSecrets {
    inner: Arc<Mutex<Read>>,
}

#[derive(Default)]
struct Read {
    secrets: Vec<Secret>,
    /// More than [`MAX_READ_PER_CALL`] were read.
    overflow: bool,
}

impl ReadSecrets {
    /// Remember `secret` (once: a cached secret read twice is one entry).
    pub(crate) fn record(&self, secret: &Secret) {
        let mut read = crate::cache::lock(&self.inner);
        if read.secrets.iter().any(|s| s.same_values(secret)) {
            return;
        }
        if read.secrets.len() >= MAX_READ_PER_CALL {
            read.overflow = true;
            return;
        }
        read.secrets.push(secret.clone());
    }

    /// The secrets read so far, or `None` when more were read than are
    /// kept (the result must then be withheld).
    #[cfg_attr(not(feature = "integrity"), allow(dead_code))] // read by the output guard
    pub(crate) fn secrets(&self) -> Option<Vec<Secret>> {
        let read = crate::cache::lock(&self.inner);
        (!read.overflow).then(|| read.secrets.clone())
    }
}

impl fmt::Debug for ReadSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let read = crate::cache::lock(&self.inner);
        f.debug_struct("ReadSecrets")
            .field("secrets", &read.secrets.len())
            .field("overflow", &read.overflow)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_recorded_once_and_the_ledger_is_bounded() {
        let ledger = ReadSecrets::default();
        let a = Secret::new([("password", "one")]);
        ledger.record(&a);
        ledger.record(&a.clone());
        ledger.record(&Secret::new([("password", "one")]));
        assert_eq!(ledger.secrets().map(|s| s.len()), Some(1));
        for i in 0..MAX_READ_PER_CALL {
            ledger.record(&Secret::new([("password", i.to_string())]));
        }
        assert!(ledger.secrets().is_none(), "past the bound the result is withheld");
        assert!(!format!("{ledger:?}").contains("one"));
    }
}
