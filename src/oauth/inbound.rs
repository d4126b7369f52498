//! [`InboundToken`]: the caller's verified token, kept for token exchange.
//!
//! A leaf: the bearer layer creates it, token exchange consumes it, and
//! neither names the other.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

/// The caller's validated bearer token, as the bearer layer put it into the
/// request extensions next to the [`Principal`](crate::Principal), when
/// asked to ([`BearerAuthLayer::keep_inbound_token`](super::BearerAuthLayer::keep_inbound_token);
/// the [`GuardedRouter`](crate::Guard) asks when a token exchange
/// is configured).
///
/// It exists so that token exchange can send it, as `subject_token`, to the
/// token endpoint and nowhere else: there is no public way to read it,
/// `Debug` prints `[REDACTED]`, and the value is zeroized when the last
/// clone is dropped.
#[derive(Clone)]
pub struct InboundToken(Arc<Zeroizing<String>>);

impl InboundToken {
    pub(crate) fn new(token: Zeroizing<String>) -> Self {
        InboundToken(Arc::new(token))
    }

    #[cfg_attr(not(feature = "exchange"), allow(dead_code))]
    pub(crate) fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for InboundToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InboundToken([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let token = InboundToken::new(Zeroizing::new("inbound-secret-token".to_owned()));
        assert_eq!(format!("{token:?}"), "InboundToken([REDACTED])");
    }
}
