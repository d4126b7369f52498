//! Regression tests for findings of the security review, over real HTTP
//! where the finding is about an upstream's answer.

#[cfg(feature = "introspection")]
mod introspection {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use rmcp_guard::AuthError;
    use rmcp_guard::oauth::{ClientAuth, Issuer, ResourceServer};

    /// An introspection endpoint that answers every request with `status`
    /// and an RFC 6749 style JSON error body, counting the requests.
    async fn failing_provider(status: StatusCode, error: &'static str) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = Router::new().route(
            "/introspect",
            post(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    (
                        status,
                        [(http::header::CONTENT_TYPE, "application/json")],
                        format!(r#"{{"error":"{error}"}}"#),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), hits)
    }

    /// A `POST /mcp` with `Authorization: Bearer {token}`.
    fn bearer(token: &str) -> http::request::Parts {
        http::Request::post("/mcp")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    /// SECURITY.md: "The provider down, timing out, answering 5xx ... is 503,
    /// never allow, and is not cached." A 5xx whose body is a JSON error
    /// object (`server_error`, `temporarily_unavailable`) must not become a
    /// 401 `invalid_token` that tells the client to throw its valid token
    /// away, nor be remembered as a refusal.
    #[tokio::test]
    async fn provider_5xx_with_json_error_is_unavailable_and_not_cached() {
        for (status, code) in [
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        ] {
            let (base, hits) = failing_provider(status, code).await;
            let rs = ResourceServer::builder(
                "http://127.0.0.1:9/mcp",
                Issuer::introspection(
                    base.clone(),
                    format!("{base}/introspect"),
                    ClientAuth::client_secret("rs", "secret").unwrap(),
                ),
            )
            .build()
            .unwrap();
            for round in 1..=2 {
                let err = rs.authenticate(&bearer("opaque-token")).await.unwrap_err();
                assert_eq!(err, AuthError::IntrospectionUnavailable, "{status}: {err:?}");
                assert_eq!(rs.challenges().reject(&err).status(), 503);
                // Not cached: the second request asks again.
                assert_eq!(hits.load(Ordering::SeqCst), round, "{status}");
            }
        }
    }
}
