//! [`Issuer`]: a trusted authorization server and how its tokens are checked.

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::Algorithm;

#[cfg(feature = "introspection")]
use super::client::ClientAuth;

/// A trusted authorization server and where its signing keys come from.
///
/// A shared-secret (HS*) issuer is not here: anyone holding the secret can
/// mint tokens, so it is a
/// [`dangerous`](super::ResourceServerBuilder::dangerous) setting.
#[derive(Clone)]
pub struct Issuer {
    pub(crate) url: String,
    pub(crate) keys: IssuerKeys,
}

#[derive(Clone)]
pub(crate) enum IssuerKeys {
    Discover,
    JwksUri(String),
    SharedSecret {
        secret: Arc<zeroize::Zeroizing<Vec<u8>>>,
        alg: Algorithm,
    },
    #[cfg(feature = "introspection")]
    Introspection {
        endpoint: String,
        auth: ClientAuth,
    },
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.keys {
            IssuerKeys::Discover => "discover".to_owned(),
            IssuerKeys::JwksUri(u) => format!("jwks_uri={u}"),
            IssuerKeys::SharedSecret { alg, .. } => format!("shared secret ({alg:?}, redacted)"),
            #[cfg(feature = "introspection")]
            IssuerKeys::Introspection { endpoint, auth } => {
                format!("introspection={endpoint} as {}", auth.client_id())
            }
        };
        f.debug_struct("Issuer")
            .field("url", &self.url)
            .field("keys", &keys)
            .finish()
    }
}

impl Issuer {
    /// An issuer whose `jwks_uri` is discovered from its RFC 8414 metadata
    /// (`/.well-known/oauth-authorization-server`), falling back to OpenID
    /// Connect discovery (`/.well-known/openid-configuration`). The metadata's
    /// `issuer` must equal `url` exactly.
    pub fn discover(url: impl Into<String>) -> Self {
        Issuer {
            url: url.into(),
            keys: IssuerKeys::Discover,
        }
    }

    /// An issuer whose key set is at a known `jwks_uri` (no discovery).
    pub fn with_jwks_uri(url: impl Into<String>, jwks_uri: impl Into<String>) -> Self {
        Issuer {
            url: url.into(),
            keys: IssuerKeys::JwksUri(jwks_uri.into()),
        }
    }

    /// An issuer that signs with a shared secret; reached only through
    /// [`DangerousResourceServerBuilder::shared_secret_issuer`](super::DangerousResourceServerBuilder::shared_secret_issuer).
    pub(crate) fn shared_secret(url: String, secret: Vec<u8>, alg: Algorithm) -> Self {
        Issuer {
            url,
            keys: IssuerKeys::SharedSecret {
                secret: Arc::new(zeroize::Zeroizing::new(secret)),
                alg,
            },
        }
    }

    /// An issuer whose tokens (typically opaque) are checked by asking its
    /// RFC 7662 introspection endpoint, authenticating as `client`.
    ///
    /// Every token that is not a JWT of another configured issuer goes there;
    /// see [`IntrospectionConfig`](super::IntrospectionConfig) for the
    /// rules, the checks and the caches. At most one introspection issuer can be configured.
    #[cfg(feature = "introspection")]
    #[cfg_attr(docsrs, doc(cfg(feature = "introspection")))]
    pub fn introspection(
        url: impl Into<String>,
        introspection_endpoint: impl Into<String>,
        client: ClientAuth,
    ) -> Self {
        Issuer {
            url: url.into(),
            keys: IssuerKeys::Introspection {
                endpoint: introspection_endpoint.into(),
                auth: client,
            },
        }
    }

    /// The issuer identifier, as it must appear in `iss`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_is_not_in_debug() {
        let issuer = Issuer::shared_secret(
            "https://idp.example.com".into(),
            b"super-secret-value-0123456789abcdef".to_vec(),
            Algorithm::HS256,
        );
        let shown = format!("{issuer:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
    }
}
