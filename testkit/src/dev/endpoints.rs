//! The HTTP endpoints of the development authorization server and the grants
//! they keep.
//!
//! Every handler turns every input into a response: request bodies are read
//! as bytes under a size limit and parsed by hand, so no extractor rejection,
//! parse failure or lock poisoning can panic. Codes and refresh tokens are
//! kept only as SHA-256 hashes and are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use url::{Url, form_urlencoded};

use super::cimd::{self, Refusal};
use super::clients::{Client, ClientMetadata, GRANT_TYPES, MetadataError, parse_metadata};
use super::dpop;
use super::store::Store;
use super::{AUTHORIZE_PATH, DemoUser, JWKS_PATH, METADATA_PATH, REGISTER_PATH, Shared, TOKEN_PATH};

/// Largest request body accepted (registration JSON, token form).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// SHA-256 of a code or refresh token: what the stores keep instead of it.
type Digest = [u8; 32];

/// An issued, not yet redeemed authorization code.
#[derive(Debug)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    scopes: Vec<String>,
    family: u64,
}

/// A live refresh token.
#[derive(Debug)]
struct RefreshGrant {
    client_id: String,
    scopes: Vec<String>,
    family: u64,
    /// The thumbprint of the DPoP key it is bound to (issued with a proof).
    jkt: Option<String>,
}

/// Everything the server remembers, each bounded and expiring.
pub(super) struct Stores {
    pub(super) clients: Store<String, Client>,
    codes: Store<Digest, CodeGrant>,
    /// Redeemed codes, to revoke the refresh tokens of a replayed one.
    used_codes: Store<Digest, u64>,
    refresh_tokens: Store<Digest, RefreshGrant>,
    /// Rotated-out refresh tokens, to revoke the family on reuse.
    retired_refresh_tokens: Store<Digest, u64>,
    /// `jti`s of accepted DPoP proofs, to refuse a replayed proof.
    dpop_jtis: Store<Digest, ()>,
}

impl Stores {
    pub(super) fn new(capacity: usize) -> Self {
        Stores {
            clients: Store::new(capacity),
            codes: Store::new(capacity),
            used_codes: Store::new(capacity),
            refresh_tokens: Store::new(capacity),
            retired_refresh_tokens: Store::new(capacity),
            dpop_jtis: Store::new(capacity),
        }
    }

    /// Revokes every refresh token of `family`.
    fn revoke_family(&mut self, family: u64) {
        self.refresh_tokens.retain(|grant| grant.family != family);
    }
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(METADATA_PATH, get(metadata))
        .route(JWKS_PATH, get(jwks))
        .route(AUTHORIZE_PATH, get(authorize))
        .route(TOKEN_PATH, post(token))
        .route(REGISTER_PATH, post(register))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

// ---------------------------------------------------------------------------
// Helpers.

/// Seconds since the Unix epoch.
fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 32 random bytes, base64url: codes, refresh tokens, client ids, `jti`.
fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

fn digest(secret: &str) -> Digest {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 7636 `code_verifier` / S256 `code_challenge` syntax: 43 to 128
/// characters of `[A-Za-z0-9-._~]`.
fn is_pkce_string(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An OAuth error: status, `error`, `error_description`.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: &'static str,
}

fn bad_request(code: &'static str, description: &'static str) -> OAuthError {
    OAuthError {
        status: StatusCode::BAD_REQUEST,
        code,
        description,
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        tracing::debug!(
            error = self.code,
            description = self.description,
            "dev authorization server refused a request"
        );
        let body = json!({"error": self.code, "error_description": self.description});
        let mut response = (self.status, no_store(), axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"token\""),
            );
        }
        response
    }
}

fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

/// Form or query parameters. Empty values count as absent (RFC 6749 section
/// 3.1); a repeated parameter is an error (RFC 6749 section 3.1).
fn parse_params(raw: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut params = HashMap::new();
    for (name, value) in form_urlencoded::parse(raw) {
        if value.is_empty() {
            continue;
        }
        if params.insert(name.into_owned(), value.into_owned()).is_some() {
            return Err(bad_request("invalid_request", "a parameter is repeated"));
        }
    }
    Ok(params)
}

/// Whether `header` has the media type `expected` (parameters ignored).
fn has_media_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// Requested scopes, deduplicated in order; each must be supported.
fn parse_scopes(shared: &Shared, scope: Option<&String>) -> Result<Vec<String>, OAuthError> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in scope.map(|s| s.split_whitespace()).into_iter().flatten() {
        if !shared.scopes_supported.iter().any(|s| s == scope) {
            return Err(bad_request("invalid_scope", "a requested scope is not supported"));
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    Ok(scopes)
}

// ---------------------------------------------------------------------------
// Tokens.

pub(super) fn jwks_document(shared: &Shared) -> Value {
    json!({ "keys": [shared.key.public_jwk()] })
}

/// Signs an RFC 9068 access token for the demo user and the protected
/// resource; bound to the DPoP key `jkt` (claim `cnf`) if given.
pub(super) fn sign_access_token(
    shared: &Shared,
    client_id: &str,
    scopes: &[String],
    lifetime: Duration,
    jkt: Option<&str>,
) -> String {
    sign_access_token_as(shared, &shared.user, client_id, scopes, lifetime, jkt)
}

/// [`sign_access_token`] for `user` instead of the demo user.
pub(super) fn sign_access_token_as(
    shared: &Shared,
    user: &DemoUser,
    client_id: &str,
    scopes: &[String],
    lifetime: Duration,
    jkt: Option<&str>,
) -> String {
    let now = now_unix();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(shared.issuer));
    claims.insert("sub".into(), json!(user.subject));
    claims.insert("aud".into(), json!(shared.resource));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now.saturating_add(lifetime.as_secs().max(1))));
    claims.insert("client_id".into(), json!(client_id));
    if let Some(jti) = random_token() {
        claims.insert("jti".into(), json!(jti));
    }
    if !scopes.is_empty() {
        claims.insert("scope".into(), json!(scopes.join(" ")));
    }
    if !user.groups.is_empty() {
        claims.insert("groups".into(), json!(user.groups));
    }
    if let Some(tenant) = &user.tenant {
        claims.insert("tenant".into(), json!(tenant));
    }
    if let Some(jkt) = jkt {
        claims.insert("cnf".into(), json!({"jkt": jkt}));
    }
    let header = json!({"alg": shared.key.alg().name(), "typ": "at+jwt", "kid": shared.key.kid()});
    shared.key.sign_raw(&header, &Value::Object(claims))
}

/// `token_type` of a token response: `DPoP` for a token bound to a key.
fn token_type(jkt: Option<&str>) -> &'static str {
    if jkt.is_some() { "DPoP" } else { "Bearer" }
}

/// The token response: a fresh access token, and a fresh refresh token of
/// `family` when the client may refresh; both bound to the DPoP key `jkt`
/// if given.
fn token_response(
    shared: &Shared,
    client_id: &str,
    client: &Client,
    scopes: Vec<String>,
    family: u64,
    jkt: Option<&str>,
) -> Response {
    let lifetime = shared.lifetimes.access_token;
    let access_token = sign_access_token(shared, client_id, &scopes, lifetime, jkt);
    let mut body = json!({
        "access_token": access_token,
        "token_type": token_type(jkt),
        "expires_in": lifetime.as_secs().max(1),
    });
    if !scopes.is_empty() {
        body["scope"] = json!(scopes.join(" "));
    }
    if client.refresh_tokens {
        let Some(refresh_token) = random_token() else {
            return server_error();
        };
        let grant = RefreshGrant {
            client_id: client_id.to_owned(),
            scopes,
            family,
            jkt: jkt.map(str::to_owned),
        };
        shared
            .stores()
            .refresh_tokens
            .insert(digest(&refresh_token), grant, shared.lifetimes.refresh_token);
        body["refresh_token"] = json!(refresh_token);
    }
    (StatusCode::OK, no_store(), axum::Json(body)).into_response()
}

fn server_error() -> Response {
    tracing::error!("dev authorization server: the system random source failed");
    OAuthError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "server_error",
        description: "the server could not generate a random value",
    }
    .into_response()
}

/// The client `client_id` names: a registered one, or, for a URL, the one
/// its metadata document describes. Every failure is `invalid_client` (400;
/// the token endpoint answers 401), or `temporarily_unavailable` (503) when
/// too many documents are being fetched.
async fn find_client(shared: &Shared, client_id: &str) -> Result<Client, OAuthError> {
    if let Some(resolver) = shared.cimd.as_ref().filter(|_| cimd::is_document_url(client_id)) {
        return resolver.resolve(client_id).await.map_err(|refusal| match refusal {
            Refusal::Client(description) => bad_request("invalid_client", description),
            Refusal::Busy => OAuthError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "temporarily_unavailable",
                description: "too many client metadata documents are being fetched; try again",
            },
        });
    }
    let client = shared.stores().clients.get(&client_id.to_owned()).cloned();
    client.ok_or_else(|| bad_request("invalid_client", "unknown client_id"))
}

// ---------------------------------------------------------------------------
// Handlers.

async fn metadata(State(shared): State<Arc<Shared>>) -> Response {
    let iss = &shared.issuer;
    let mut body = json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}{AUTHORIZE_PATH}"),
        "token_endpoint": format!("{iss}{TOKEN_PATH}"),
        "registration_endpoint": format!("{iss}{REGISTER_PATH}"),
        "jwks_uri": format!("{iss}{JWKS_PATH}"),
        "scopes_supported": shared.scopes_supported,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": GRANT_TYPES,
        "token_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
        "dpop_signing_alg_values_supported": dpop::SIGNING_ALGS,
        "service_documentation": "https://docs.rs/rmcp-guard-testkit/latest/rmcp_guard_testkit/dev/",
    });
    if shared.cimd.is_some() {
        body["client_id_metadata_document_supported"] = json!(true);
    }
    axum::Json(body).into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(jwks_document(&shared)).into_response()
}

/// RFC 7591 registration of a public client.
async fn register(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let invalid = |description| bad_request("invalid_client_metadata", description).into_response();
    if !has_media_type(&headers, "application/json") {
        return bad_request("invalid_request", "the body must be application/json").into_response();
    }
    let Ok(Value::Object(metadata)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("the body must be a JSON object");
    };

    let ClientMetadata {
        client,
        grant_types,
        name: client_name,
    } = match parse_metadata(&metadata) {
        Ok(parsed) => parsed,
        Err(MetadataError::RedirectUri(description)) => {
            return bad_request("invalid_redirect_uri", description).into_response();
        }
        Err(MetadataError::Metadata(description)) => return invalid(description),
    };
    let redirect_uris = client.redirect_uris.clone();

    let Some(client_id) = random_token() else {
        return server_error();
    };
    shared
        .stores()
        .clients
        .insert(client_id.clone(), client, shared.lifetimes.client);
    tracing::debug!(
        client_name = client_name.as_deref().unwrap_or(""),
        "dev authorization server registered a client"
    );

    let mut body = json!({
        "client_id": client_id,
        "client_id_issued_at": now_unix(),
        "redirect_uris": redirect_uris,
        "grant_types": grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    if let Some(name) = client_name {
        body["client_name"] = json!(name);
    }
    (StatusCode::CREATED, no_store(), axum::Json(body)).into_response()
}

/// The authorization endpoint: checks the request and approves it at once.
///
/// Errors about the client or its redirect URI are answered here (400),
/// never redirected; every later error is sent to the redirect URI.
async fn authorize(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params = match parse_params(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(err) => return err.into_response(),
    };
    let Some(client_id) = params.get("client_id") else {
        return bad_request("invalid_request", "client_id is required").into_response();
    };
    let client = match find_client(&shared, client_id).await {
        Ok(client) => client,
        Err(err) => return err.into_response(),
    };
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return bad_request("invalid_request", "redirect_uri is required").into_response();
    };
    if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
        return bad_request("invalid_request", "redirect_uri is not registered for this client").into_response();
    }
    let Ok(mut location) = Url::parse(redirect_uri) else {
        return bad_request("invalid_request", "redirect_uri is not a URL").into_response();
    };

    let state = params.get("state");
    let outcome = approve(&shared, client_id, redirect_uri, &params);
    {
        let mut pairs = location.query_pairs_mut();
        match &outcome {
            Ok(code) => {
                pairs.append_pair("code", code);
            }
            Err(err) => {
                tracing::debug!(
                    error = err.code,
                    description = err.description,
                    "dev authorization server refused an authorization request"
                );
                pairs.append_pair("error", err.code);
                pairs.append_pair("error_description", err.description);
            }
        }
        if let Some(state) = state {
            pairs.append_pair("state", state);
        }
        pairs.append_pair("iss", &shared.issuer);
    }
    let Ok(location) = HeaderValue::from_str(location.as_str()) else {
        return bad_request("invalid_request", "redirect_uri cannot be used").into_response();
    };
    let mut response = (StatusCode::FOUND, no_store()).into_response();
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The checks after the redirect URI is known good; on success the new code.
fn approve(
    shared: &Shared,
    client_id: &str,
    redirect_uri: &str,
    params: &HashMap<String, String>,
) -> Result<String, OAuthError> {
    if params.get("response_type").map(String::as_str) != Some("code") {
        return Err(bad_request("unsupported_response_type", "response_type must be code"));
    }
    if params.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return Err(bad_request(
            "invalid_request",
            "PKCE with code_challenge_method S256 is required (plain is not supported)",
        ));
    }
    let Some(challenge) = params
        .get("code_challenge")
        .filter(|c| c.len() == 43 && is_pkce_string(c))
    else {
        return Err(bad_request(
            "invalid_request",
            "code_challenge must be a base64url SHA-256 (43 characters)",
        ));
    };
    if params.get("resource").is_some_and(|r| *r != shared.resource) {
        return Err(bad_request(
            "invalid_target",
            "this server issues tokens only for its protected resource",
        ));
    }
    let scopes = parse_scopes(shared, params.get("scope"))?;
    let Some(code) = random_token() else {
        return Err(OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "server_error",
            description: "the server could not generate a random value",
        });
    };
    let grant = CodeGrant {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        challenge: challenge.clone(),
        scopes,
        family: shared.next_family.fetch_add(1, Ordering::Relaxed),
    };
    shared
        .stores()
        .codes
        .insert(digest(&code), grant, shared.lifetimes.code);
    tracing::debug!(subject = %shared.user.subject, "dev authorization server approved an authorization request");
    Ok(code)
}

/// The client of a token request: `client_id` in the body, or HTTP Basic with
/// an empty password (public clients have no secret).
fn token_client_id(headers: &HeaderMap, params: &HashMap<String, String>) -> Result<String, OAuthError> {
    let invalid_client = OAuthError {
        status: StatusCode::UNAUTHORIZED,
        code: "invalid_client",
        description: "unknown client or unsupported client authentication",
    };
    let from_header = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| bad_request("invalid_request", "bad Authorization header"))?;
            let Some(encoded) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) else {
                return Err(invalid_client);
            };
            let decoded = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(|| bad_request("invalid_request", "bad Authorization header"))?;
            let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
            if !password.is_empty() {
                return Err(invalid_client);
            }
            let user: String = form_urlencoded::parse(format!("u={user}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            Some(user)
        }
    };
    match (from_header, params.get("client_id")) {
        (Some(a), Some(b)) if a != *b => Err(bad_request("invalid_request", "two different client ids")),
        (Some(id), _) => Ok(id),
        (None, Some(id)) => Ok(id.clone()),
        (None, None) => Err(invalid_client),
    }
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let outcome = match token_client(&headers, &body) {
        Ok((params, client_id)) => match find_client(&shared, &client_id).await {
            Ok(client) => dpop_key(&shared, &headers)
                .and_then(|jkt| token_inner(&shared, &client_id, &client, &params, jkt.as_deref())),
            // RFC 6749 section 5.2: a client that fails authentication is a 401.
            Err(err) if err.code == "invalid_client" => Err(OAuthError {
                status: StatusCode::UNAUTHORIZED,
                ..err
            }),
            Err(err) => Err(err),
        },
        Err(err) => Err(err),
    };
    match outcome {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

/// The thumbprint of the key the request's DPoP proof proves, `None`
/// without a proof; a bad or replayed proof is `invalid_dpop_proof`.
fn dpop_key(shared: &Shared, headers: &HeaderMap) -> Result<Option<String>, OAuthError> {
    let invalid = |description| bad_request("invalid_dpop_proof", description);
    let token_endpoint = format!("{}{TOKEN_PATH}", shared.issuer);
    let Some(proof) = dpop::check(headers, &token_endpoint, now_unix()).map_err(invalid)? else {
        return Ok(None);
    };
    let mut stores = shared.stores();
    let jti = digest(&proof.jti);
    if stores.dpop_jtis.get(&jti).is_some() {
        return Err(invalid("the DPoP proof was already used"));
    }
    // A proof is acceptable for at most twice the allowed skew.
    let ttl = Duration::from_secs(2 * dpop::MAX_SKEW_SECS + 1);
    stores.dpop_jtis.insert(jti, (), ttl);
    Ok(Some(proof.jkt))
}

/// The parameters and the client id of a token request.
fn token_client(headers: &HeaderMap, body: &[u8]) -> Result<(HashMap<String, String>, String), OAuthError> {
    if !has_media_type(headers, "application/x-www-form-urlencoded") {
        return Err(bad_request(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let params = parse_params(body)?;
    let client_id = token_client_id(headers, &params)?;
    Ok((params, client_id))
}

fn token_inner(
    shared: &Shared,
    client_id: &str,
    client: &Client,
    params: &HashMap<String, String>,
    jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    if params.get("resource").is_some_and(|r| *r != shared.resource) {
        return Err(bad_request(
            "invalid_target",
            "this server issues tokens only for its protected resource",
        ));
    }
    match params.get("grant_type").map(String::as_str) {
        Some("authorization_code") => code_grant(shared, client_id, client, params, jkt),
        Some("refresh_token") => refresh_grant(shared, client_id, client, params, jkt),
        Some(_) => Err(bad_request("unsupported_grant_type", "grant_type is not supported")),
        None => Err(bad_request("invalid_request", "grant_type is required")),
    }
}

fn code_grant(
    shared: &Shared,
    client_id: &str,
    client: &Client,
    params: &HashMap<String, String>,
    jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    let (Some(code), Some(verifier), Some(redirect_uri)) = (
        params.get("code"),
        params.get("code_verifier"),
        params.get("redirect_uri"),
    ) else {
        return Err(bad_request(
            "invalid_request",
            "code, code_verifier and redirect_uri are required",
        ));
    };
    let invalid_grant = |description| bad_request("invalid_grant", description);
    let hash = digest(code);
    let grant = {
        let mut stores = shared.stores();
        match stores.codes.remove(&hash) {
            Some(grant) => {
                // A code is single use, whatever happens next.
                stores
                    .used_codes
                    .insert(hash, grant.family, shared.lifetimes.refresh_token);
                grant
            }
            None => {
                if let Some(&family) = stores.used_codes.get(&hash) {
                    // RFC 6749 section 4.1.2: a replayed code revokes what it gave.
                    stores.revoke_family(family);
                    tracing::warn!(
                        "dev authorization server: an authorization code was reused; its tokens are revoked"
                    );
                }
                return Err(invalid_grant("the code is unknown, expired or already used"));
            }
        }
    };
    if grant.client_id != client_id {
        return Err(invalid_grant("the code was issued to another client"));
    }
    if grant.redirect_uri != *redirect_uri {
        return Err(invalid_grant("redirect_uri does not match the authorization request"));
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if !is_pkce_string(verifier) || !constant_time_eq(computed.as_bytes(), grant.challenge.as_bytes()) {
        return Err(invalid_grant("PKCE verification failed"));
    }
    Ok(token_response(
        shared,
        client_id,
        client,
        grant.scopes,
        grant.family,
        jkt,
    ))
}

fn refresh_grant(
    shared: &Shared,
    client_id: &str,
    client: &Client,
    params: &HashMap<String, String>,
    jkt: Option<&str>,
) -> Result<Response, OAuthError> {
    let Some(refresh_token) = params.get("refresh_token") else {
        return Err(bad_request("invalid_request", "refresh_token is required"));
    };
    if !client.refresh_tokens {
        return Err(bad_request(
            "unauthorized_client",
            "the client did not register the refresh_token grant",
        ));
    }
    let invalid_grant = |description| bad_request("invalid_grant", description);
    let hash = digest(refresh_token);
    let grant = {
        let mut stores = shared.stores();
        // RFC 9449 section 5: a bound refresh token needs a proof with its
        // key. Checked before rotation, so a thief without the key cannot
        // spend the token.
        if let Some(bound) = stores.refresh_tokens.get(&hash).and_then(|g| g.jkt.as_deref()) {
            match jkt {
                None => {
                    return Err(bad_request(
                        "invalid_dpop_proof",
                        "the refresh token is bound to a DPoP key; a DPoP proof is required",
                    ));
                }
                Some(jkt) if jkt != bound => {
                    return Err(bad_request(
                        "invalid_dpop_proof",
                        "the refresh token is bound to another DPoP key",
                    ));
                }
                Some(_) => {}
            }
        }
        match stores.refresh_tokens.remove(&hash) {
            Some(grant) => {
                // Rotation: this refresh token is spent.
                stores
                    .retired_refresh_tokens
                    .insert(hash, grant.family, shared.lifetimes.refresh_token);
                grant
            }
            None => {
                if let Some(&family) = stores.retired_refresh_tokens.get(&hash) {
                    stores.revoke_family(family);
                    tracing::warn!(
                        "dev authorization server: a rotated refresh token was reused; its family is revoked"
                    );
                }
                return Err(invalid_grant("the refresh token is unknown, expired or already used"));
            }
        }
    };
    if grant.client_id != client_id {
        return Err(invalid_grant("the refresh token was issued to another client"));
    }
    let scopes = match params.get("scope") {
        None => grant.scopes.clone(),
        Some(_) => {
            let asked = parse_scopes(shared, params.get("scope"))?;
            if asked.iter().any(|s| !grant.scopes.contains(s)) {
                return Err(bad_request(
                    "invalid_scope",
                    "a refresh cannot widen the original grant",
                ));
            }
            asked
        }
    };
    // The new refresh token keeps the original grant; only the access token narrows.
    let lifetime = shared.lifetimes.access_token;
    let access_token = sign_access_token(shared, client_id, &scopes, lifetime, jkt);
    let Some(new_refresh) = random_token() else {
        return Ok(server_error());
    };
    shared.stores().refresh_tokens.insert(
        digest(&new_refresh),
        RefreshGrant {
            client_id: client_id.to_owned(),
            scopes: grant.scopes,
            family: grant.family,
            // The binding never changes: an unbound refresh token stays
            // unbound even when presented with a proof.
            jkt: grant.jkt,
        },
        shared.lifetimes.refresh_token,
    );
    let mut body = json!({
        "access_token": access_token,
        "token_type": token_type(jkt),
        "expires_in": lifetime.as_secs().max(1),
        "refresh_token": new_refresh,
    });
    if !scopes.is_empty() {
        body["scope"] = json!(scopes.join(" "));
    }
    Ok((StatusCode::OK, no_store(), axum::Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_refuse_repeats_and_skip_empties() {
        assert!(parse_params(b"a=1&a=2").is_err());
        let p = parse_params(b"a=&b=2&%ZZ=%").unwrap();
        assert!(!p.contains_key("a"));
        assert_eq!(p["b"], "2");
    }

    #[test]
    fn pkce_syntax() {
        assert!(is_pkce_string(&"a".repeat(43)));
        assert!(!is_pkce_string(&"a".repeat(42)));
        assert!(!is_pkce_string(&"a".repeat(129)));
        assert!(!is_pkce_string(&format!("{}+", "a".repeat(43))));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
