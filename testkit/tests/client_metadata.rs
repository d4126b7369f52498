//! OAuth Client ID Metadata Documents at the development authorization
//! server, over real HTTP: a client whose `client_id` is the URL of its
//! metadata document goes through authorization code + PKCE, token and
//! refresh with no registration; every way a document can be wrong is
//! refused with an OAuth error and never approved.
//!
//! The documents are served by this test on a loopback port over plain
//! `http`, which the development server accepts (an `https` document served
//! on loopback is exercised by the root crate's `tests/ts_client.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rmcp_guard_testkit::dev::DevAuthServer;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";
const CALLBACK: &str = "http://127.0.0.1:7777/callback";

// ---------------------------------------------------------------------------
// The client's side: documents on a loopback port, each fetch counted.

struct Documents {
    base: String,
    fetches: std::sync::Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    /// `slow-*` documents wait for a permit here before answering.
    gate: tokio::sync::Semaphore,
}

impl Documents {
    fn url(&self, name: &str) -> String {
        format!("{}/clients/{name}", self.base)
    }

    fn fetches(&self, name: &str) -> usize {
        self.fetches.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

fn document(docs: &Documents, name: &str) -> Value {
    json!({
        "client_id": docs.url(name),
        "client_name": "client metadata test",
        "redirect_uris": [CALLBACK],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

async fn serve_document(State(docs): State<Arc<Documents>>, Path(name): Path<String>) -> Response {
    *docs.fetches.lock().unwrap().entry(name.clone()).or_default() += 1;
    docs.total.fetch_add(1, Ordering::SeqCst);
    let json_type = [(header::CONTENT_TYPE, "application/json")];
    let mut doc = document(&docs, &name);
    if name.starts_with("slow-") {
        let _permit = docs.gate.acquire().await;
        return (json_type, doc.to_string()).into_response();
    }
    match name.as_str() {
        "good.json" => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "max-age=60"),
            ],
            doc.to_string(),
        )
            .into_response(),
        "no-store.json" => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            doc.to_string(),
        )
            .into_response(),
        "wrong-id.json" => {
            doc["client_id"] = json!(docs.url("good.json"));
            (json_type, doc.to_string()).into_response()
        }
        "big.json" => {
            doc["padding"] = json!("x".repeat(6 * 1024));
            (json_type, doc.to_string()).into_response()
        }
        "secret.json" => {
            doc["client_secret"] = json!("s3cret");
            (json_type, doc.to_string()).into_response()
        }
        "basic-auth.json" => {
            doc["token_endpoint_auth_method"] = json!("client_secret_basic");
            (json_type, doc.to_string()).into_response()
        }
        "html.json" => ([(header::CONTENT_TYPE, "text/html")], doc.to_string()).into_response(),
        "redirect.json" => (StatusCode::FOUND, [(header::LOCATION, docs.url("good.json"))]).into_response(),
        "broken.json" => (json_type, "{\"client_id\":").into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start_documents() -> Arc<Documents> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let docs = Arc::new(Documents {
        base: format!("http://{}", listener.local_addr().unwrap()),
        fetches: Default::default(),
        total: AtomicUsize::new(0),
        gate: tokio::sync::Semaphore::new(0),
    });
    let app = axum::Router::new()
        .route("/clients/{name}", axum::routing::get(serve_document))
        .with_state(Arc::clone(&docs));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    docs
}

// ---------------------------------------------------------------------------
// The flow, driven with reqwest (redirects never followed).

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce(seed: char) -> Pkce {
    let verifier: String = std::iter::repeat_n(seed, 64).collect();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce { verifier, challenge }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// GET /authorize for `client_id` with a good request otherwise: the status,
/// the `Location` if any, and the JSON body if any.
async fn authorize(
    auth: &DevAuthServer,
    client_id: &str,
    redirect_uri: &str,
    p: &Pkce,
) -> (u16, Option<String>, Value) {
    let url = url::Url::parse_with_params(
        &auth.authorization_endpoint(),
        [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", redirect_uri),
            ("code_challenge", p.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("resource", RESOURCE),
            ("scope", "mcp:tools"),
            ("state", "st"),
        ],
    )
    .unwrap();
    let response = http().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get(header::LOCATION)
        .map(|l| l.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, location, body)
}

async fn post_token(auth: &DevAuthServer, form: &[(&str, &str)]) -> (u16, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = http()
        .post(auth.token_endpoint())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

fn claims(token: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

async fn dev_server() -> DevAuthServer {
    DevAuthServer::builder(RESOURCE).start().await.unwrap()
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn metadata_advertises_client_id_metadata_documents_beside_registration() {
    let auth = dev_server().await;
    let m: Value = http()
        .get(auth.metadata_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["client_id_metadata_document_supported"], true);
    assert_eq!(m["registration_endpoint"], auth.registration_endpoint(), "DCR stays");
}

#[tokio::test]
async fn a_metadata_document_client_completes_code_pkce_token_and_refresh() {
    let docs = start_documents().await;
    let auth = dev_server().await;
    let client_id = docs.url("good.json");
    let p = pkce('a');

    let (status, location, _) = authorize(&auth, &client_id, CALLBACK, &p).await;
    assert_eq!(status, 302);
    let location = location.unwrap();
    assert!(location.starts_with(CALLBACK), "{location}");
    assert_eq!(query_param(&location, "state").as_deref(), Some("st"));
    assert_eq!(query_param(&location, "iss").as_deref(), Some(auth.issuer()));
    let code = query_param(&location, "code").expect("a code");
    assert_eq!(auth.registered_clients(), 0, "no registration happened");

    let (status, body) = post_token(
        &auth,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", &p.verifier),
            ("redirect_uri", CALLBACK),
            ("client_id", &client_id),
            ("resource", RESOURCE),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        c["client_id"],
        client_id.as_str(),
        "the token names the document URL as its client"
    );
    assert_eq!(c["aud"], RESOURCE);
    assert_eq!(c["scope"], "mcp:tools");

    // The document allows refresh_token: the refresh grant works and rotates.
    let refresh = body["refresh_token"].as_str().expect("a refresh token").to_owned();
    let (status, body) = post_token(
        &auth,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["refresh_token"], refresh.as_str());

    // `max-age=60`: one fetch served /authorize and both /token requests.
    assert_eq!(docs.fetches("good.json"), 1);

    // The code is bound to its client: another document URL cannot redeem it.
    let (_, location, _) = authorize(&auth, &client_id, CALLBACK, &p).await;
    let code = query_param(&location.unwrap(), "code").unwrap();
    let (status, body) = post_token(
        &auth,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", &p.verifier),
            ("redirect_uri", CALLBACK),
            ("client_id", &docs.url("no-store.json")),
        ],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
}

#[tokio::test]
async fn a_no_store_document_is_fetched_again_each_time() {
    let docs = start_documents().await;
    let auth = dev_server().await;
    let client_id = docs.url("no-store.json");
    for _ in 0..2 {
        let (status, _, body) = authorize(&auth, &client_id, CALLBACK, &pkce('b')).await;
        assert_eq!(status, 302, "{body}");
    }
    assert_eq!(docs.fetches("no-store.json"), 2);
}

#[tokio::test]
async fn a_document_naming_another_client_id_is_refused() {
    let docs = start_documents().await;
    let auth = dev_server().await;
    let client_id = docs.url("wrong-id.json");
    let (status, location, body) = authorize(&auth, &client_id, CALLBACK, &pkce('c')).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(location, None, "never redirected");
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not the document's URL"),
        "{body}"
    );
    // The token endpoint refuses the same client as a failed client authentication.
    let (status, body) = post_token(
        &auth,
        &[
            ("grant_type", "authorization_code"),
            ("code", "x"),
            ("code_verifier", &pkce('c').verifier),
            ("redirect_uri", CALLBACK),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
}

#[tokio::test]
async fn a_redirect_uri_missing_from_the_document_is_refused() {
    let docs = start_documents().await;
    let auth = dev_server().await;
    let (status, location, body) = authorize(
        &auth,
        &docs.url("good.json"),
        "http://127.0.0.1:7778/callback",
        &pkce('d'),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(location, None, "never redirected to an unlisted URI");
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn unreachable_oversized_and_unacceptable_documents_are_refused() {
    let docs = start_documents().await;
    let auth = dev_server().await;
    // A loopback port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}/client.json")
    };
    let cases = [
        (closed, "could not be fetched"),
        (docs.url("missing.json"), "200 OK"),
        (docs.url("big.json"), "larger than 5 KiB"),
        (docs.url("redirect.json"), "redirects are not followed"),
        (docs.url("secret.json"), "client secret"),
        (docs.url("basic-auth.json"), "public clients"),
        (docs.url("html.json"), "application/json"),
        (docs.url("broken.json"), "not a JSON object"),
    ];
    for (client_id, why) in cases {
        let (status, location, body) = authorize(&auth, &client_id, CALLBACK, &pkce('e')).await;
        assert_eq!(status, 400, "{client_id}: {body}");
        assert_eq!(location, None, "{client_id}");
        assert_eq!(body["error"], "invalid_client", "{client_id}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(why), "{client_id}: {description}");
    }
    // The redirect was not followed: good.json was never fetched.
    assert_eq!(docs.fetches("good.json"), 0);
    // A refusal is not cached: still refused, fetched again.
    let (status, ..) = authorize(&auth, &docs.url("wrong-id.json"), CALLBACK, &pkce('e')).await;
    let (status2, ..) = authorize(&auth, &docs.url("wrong-id.json"), CALLBACK, &pkce('e')).await;
    assert_eq!((status, status2), (400, 400));
    assert_eq!(docs.fetches("wrong-id.json"), 2);
}

#[tokio::test]
async fn urls_that_may_not_be_fetched_are_refused_before_any_fetch() {
    let docs = start_documents().await;
    let auth = dev_server().await;
    let good = docs.url("good.json");
    let cases = [
        // Plain http off loopback: the development server fetches https, or http on loopback only.
        "http://client.example/client.json".to_owned(),
        // No path.
        docs.base.clone() + "/",
        // Not in normal form: dot segments, uppercase scheme.
        format!("{}/clients/../clients/good.json", docs.base),
        good.replacen("http://", "HTTP://", 1),
        // Fragment, userinfo.
        format!("{good}#x"),
        good.replacen("http://", "http://user@", 1),
        "ftp://127.0.0.1/client.json".to_owned(),
    ];
    for client_id in cases {
        let (status, location, body) = authorize(&auth, &client_id, CALLBACK, &pkce('f')).await;
        assert_eq!((status, location), (400, None), "{client_id}: {body}");
        assert_eq!(body["error"], "invalid_client", "{client_id}: {body}");
    }
    assert_eq!(docs.total.load(Ordering::SeqCst), 0, "nothing was fetched");
}

#[tokio::test]
async fn turned_off_the_server_neither_advertises_nor_fetches_documents() {
    let docs = start_documents().await;
    let auth = DevAuthServer::builder(RESOURCE)
        .client_id_metadata_documents(false)
        .start()
        .await
        .unwrap();
    let m: Value = http()
        .get(auth.metadata_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(m.get("client_id_metadata_document_supported").is_none(), "{m}");
    let (status, _, body) = authorize(&auth, &docs.url("good.json"), CALLBACK, &pkce('g')).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client")),
        "{body}"
    );
    assert_eq!(docs.total.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn at_most_eight_document_fetches_run_at_once() {
    let docs = start_documents().await;
    let auth = dev_server().await;
    // Eight authorization requests whose documents do not answer yet.
    let mut held = Vec::new();
    for i in 0..8 {
        let (auth, client_id) = (auth.clone(), docs.url(&format!("slow-{i}.json")));
        held.push(tokio::spawn(async move {
            authorize(&auth, &client_id, CALLBACK, &pkce('h')).await.0
        }));
    }
    while docs.total.load(Ordering::SeqCst) < 8 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A ninth is refused at once rather than queued, and nothing is fetched for it.
    let (status, location, body) = authorize(&auth, &docs.url("good.json"), CALLBACK, &pkce('h')).await;
    assert_eq!((status, location), (503, None), "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert_eq!(docs.fetches("good.json"), 0);
    // Released, the eight complete, and the slots are free again.
    docs.gate.add_permits(8);
    for request in held {
        assert_eq!(request.await.unwrap(), 302);
    }
    let (status, ..) = authorize(&auth, &docs.url("good.json"), CALLBACK, &pkce('h')).await;
    assert_eq!(status, 302);
}
