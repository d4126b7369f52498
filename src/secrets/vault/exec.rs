//! Vault requests that carry the current span's W3C trace context (feature
//! `telemetry`; without it, the same requests without it).
//!
//! vaultrs sends each request through its client's rustify HTTP client and
//! gives no per-request hook: its middleware is a concrete type
//! (`EndpointMiddleware`: token, namespace, wrapping) and its reqwest client
//! takes only fixed default headers, which cannot carry a context that
//! changes with every request. So the requests the store makes for a
//! caller (KV reads, `lookup-self`) are executed here through rustify with
//! vaultrs' own middleware, over a client that adds `traceparent` /
//! `tracestate` to each request, and vaultrs' own error mapping (an error
//! body becomes `ClientError::APIError`). Logins and renewals (the renewal
//! task's, with no caller's trace) go through vaultrs unchanged.

use std::future::Future;
use std::pin::Pin;

use rustify::clients::reqwest::Client as Http;
use rustify::endpoint::Endpoint;
use rustify::errors::ClientError as RestError;
use serde::de::DeserializeOwned;
use tracing::Span;
use vaultrs::api::{EndpointError, EndpointResult};
use vaultrs::client::{Client as _, VaultClient};
use vaultrs::error::ClientError;

/// The client's rustify HTTP client, adding the trace context of `span`
/// (the store's span of this call, current when the call began: inside
/// rustify, rustify's own spans are current) to each request.
struct Traced<'a> {
    http: &'a Http,
    span: Span,
}

impl<'a> Traced<'a> {
    fn new(client: &'a VaultClient) -> Self {
        Traced {
            http: client.http(),
            span: Span::current(),
        }
    }
}

// rustify's `Client` is an `async_trait`: its `send` written out.
impl rustify::client::Client for Traced<'_> {
    fn send<'life0, 'async_trait>(
        &'life0 self,
        mut req: http::Request<Vec<u8>>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Vec<u8>>, RestError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        crate::telemetry::trace::inject_from(&self.span, req.headers_mut());
        self.http.send(req)
    }

    fn base(&self) -> &str {
        rustify::client::Client::base(self.http)
    }
}

/// vaultrs' `api::exec_with_result`: the `data` of Vault's answer.
pub(super) async fn exec_with_result<E>(client: &VaultClient, endpoint: E) -> Result<E::Response, ClientError>
where
    E: Endpoint,
    E::Response: DeserializeOwned + Send + Sync,
{
    let response = endpoint
        .with_middleware(client.middle())
        .exec(&Traced::new(client))
        .await
        .map_err(api_error)?;
    let wrapped: EndpointResult<E::Response> = response.wrap().map_err(ClientError::from)?;
    wrapped.data.ok_or(ClientError::ResponseDataEmptyError)
}

/// vaultrs' `api::exec_with_no_result`: Vault's whole answer.
pub(super) async fn exec_with_no_result<E>(client: &VaultClient, endpoint: E) -> Result<E::Response, ClientError>
where
    E: Endpoint,
{
    endpoint
        .with_middleware(client.middle())
        .exec(&Traced::new(client))
        .await
        .map_err(api_error)?
        .parse()
        .map_err(ClientError::from)
}

/// An error answer whose body is Vault's `{"errors": [...]}` as
/// `ClientError::APIError`, as vaultrs reports it (the store's error
/// mapping reads both forms); anything else as a transport error.
fn api_error(error: RestError) -> ClientError {
    if let RestError::ServerResponseError {
        code,
        content: Some(content),
    } = &error
        && let Ok(body) = serde_json::from_str::<EndpointError>(content)
    {
        return ClientError::APIError {
            code: *code,
            errors: body.errors,
        };
    }
    ClientError::from(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_map_as_vaultrs_maps_them() {
        let api = api_error(RestError::ServerResponseError {
            code: 403,
            content: Some(r#"{"errors":["permission denied"]}"#.to_owned()),
        });
        assert!(matches!(api, ClientError::APIError { code: 403, ref errors } if errors == &["permission denied"]));
        let other = api_error(RestError::ServerResponseError {
            code: 502,
            content: Some("<html>bad gateway</html>".to_owned()),
        });
        assert!(matches!(
            other,
            ClientError::RestClientError {
                source: RestError::ServerResponseError { code: 502, .. }
            }
        ));
    }
}
