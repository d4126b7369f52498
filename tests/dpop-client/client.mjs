// A DPoP (RFC 9449) client built only on oauth4webapi (npm, pinned in
// package.json / package-lock.json): it gets a DPoP-bound token from a real
// authorization server (tests/oidc-provider/server.js) with the
// client_credentials grant, calls a guarded MCP server once with it (MCP
// 2026-07-28, stateless), then probes how the server rejects misuses of the
// token and of its proofs.
//
//   npm24 ci --prefix tests/dpop-client
//   ISSUER=http://127.0.0.1:<as port> CLIENT_ID=rmcp-guard CLIENT_SECRET=... \
//   RESOURCE=http://127.0.0.1:<port>/mcp MCP_URL=http://127.0.0.1:<port>/mcp \
//     "$NODE24" tests/dpop-client/client.mjs
//
// Input (environment):
//   ISSUER         the authorization server's issuer (discovered through
//                  /.well-known/openid-configuration)
//   CLIENT_ID      a confidential client (client_secret_basic) allowed the
//   CLIENT_SECRET  client_credentials grant
//   RESOURCE       the resource indicator (RFC 8707): the MCP server's
//                  canonical URL, which becomes the token's audience
//   MCP_URL        where to POST MCP requests (default: RESOURCE)
// Plain http is allowed everywhere (loopback tests).
//
// Steps: an ES256 DPoP key pair; a DPoP-bound token (scope `mcp:tools`) for
// RESOURCE; one `tools/call` of `whoami` with a DPoP proof (retried once with
// the server's nonce if it answers `use_dpop_nonce`); then three probes, sent
// as raw requests:
//   as_bearer  the same token as `Authorization: Bearer`, without a proof
//   replayed   the exact request (headers, proof, body) of the call that
//              succeeded, sent again
//   wrong_htu  a fresh proof made for MCP_URL + '/other', sent to MCP_URL
//
// Output: one JSON line on stdout, exit status 0:
//   {"token_type": "DPoP", "token_claims_cnf": {"jkt": ...} | null,
//    "ok": {"status": 200, "text": "<the tool result's text, or the body>"},
//    "as_bearer": {"status": n, "www_authenticate": "..." | null},
//    "replayed": {...}, "wrong_htu": {...}}
// `token_type` is the authorization server's own spelling; `token_claims_cnf`
// is the `cnf` claim of a JWT access token (null for an opaque one). Any
// failure before the output (discovery, token) goes to stderr, exit status 1.
// The access token is never printed.

import * as oauth from 'oauth4webapi';

const env = (name) => {
    const value = process.env[name];
    if (!value) throw new Error(`${name} is not set`);
    return value;
};

const PROTOCOL = '2026-07-28';
const TOOL = 'whoami';
const TIMEOUT_MS = 30_000;
const TEXT_LIMIT = 2000;

// Runs `request` once more if it failed for want of a (fresh) DPoP nonce: the
// DPoP handle has then cached the nonce the server sent.
async function withNonceRetry(request) {
    try {
        return await request();
    } catch (err) {
        if (!oauth.isDPoPNonceError(err)) throw err;
        return await request();
    }
}

// The `cnf` claim of a JWT access token; null for an opaque one.
function jwtCnf(token) {
    const parts = token.split('.');
    if (parts.length !== 3) return null;
    try {
        const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
        return claims.cnf ?? null;
    } catch {
        return null;
    }
}

// A 2026-07-28 `tools/call`: the body and the headers the MCP test kit sends
// (testkit/src/client.rs), apart from authorization.
let nextId = 1;
function toolCall(name, args) {
    const id = nextId++;
    const body = JSON.stringify({
        jsonrpc: '2.0',
        id,
        method: 'tools/call',
        params: {
            name,
            arguments: args,
            _meta: {
                'io.modelcontextprotocol/protocolVersion': PROTOCOL,
                'io.modelcontextprotocol/clientInfo': { name: 'rmcp-guard-dpop-client', version: '0.0.0' },
                'io.modelcontextprotocol/clientCapabilities': {},
            },
        },
    });
    const headers = new Headers({
        accept: 'application/json, text/event-stream',
        'content-type': 'application/json',
        'mcp-protocol-version': PROTOCOL,
        'mcp-method': 'tools/call',
        'mcp-name': name,
    });
    return { id, body, headers };
}

// The JSON-RPC message answering `id` in a JSON or `text/event-stream` body
// (other SSE events are skipped); null if there is none.
async function readJsonRpc(response, id) {
    const contentType = response.headers.get('content-type') ?? '';
    if (!contentType.trimStart().startsWith('text/event-stream')) {
        const text = await response.text();
        try {
            const message = JSON.parse(text);
            return { message: message?.id === id ? message : null, raw: text };
        } catch {
            return { message: null, raw: text };
        }
    }
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    let raw = '';
    let buffer = '';
    let data = [];
    const dispatch = () => {
        const payload = data.join('\n');
        data = [];
        if (!payload) return null;
        try {
            const message = JSON.parse(payload);
            return message?.id === id ? message : null;
        } catch {
            return null;
        }
    };
    const line = (text) => {
        if (text === '') return dispatch();
        if (text.startsWith(':')) return null;
        const colon = text.indexOf(':');
        const field = colon === -1 ? text : text.slice(0, colon);
        let value = colon === -1 ? '' : text.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') data.push(value);
        return null;
    };
    for (;;) {
        const { done, value } = await reader.read();
        const chunk = done ? decoder.decode() : decoder.decode(value, { stream: true });
        raw += chunk;
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf('\n')) !== -1) {
            const message = line(buffer.slice(0, end).replace(/\r$/, ''));
            buffer = buffer.slice(end + 1);
            if (message) {
                await reader.cancel().catch(() => {});
                return { message, raw };
            }
        }
        if (done) {
            if (buffer) line(buffer.replace(/\r$/, ''));
            return { message: dispatch(), raw };
        }
    }
}

// {status, text}: the text of the tool result (its `text` contents, else the
// whole result as JSON), or of the JSON-RPC error, or the body.
async function describeCall(response, id) {
    const { message, raw } = await readJsonRpc(response, id);
    let text = raw;
    if (message?.result !== undefined) {
        const texts = (message.result.content ?? [])
            .filter((item) => item?.type === 'text' && typeof item.text === 'string')
            .map((item) => item.text);
        text = texts.length ? texts.join('\n') : JSON.stringify(message.result);
    } else if (message?.error !== undefined) {
        text = JSON.stringify(message.error);
    }
    return { status: response.status, text: text.slice(0, TEXT_LIMIT) };
}

// {status, www_authenticate} of a raw request; the body is drained.
async function probe(url, init) {
    const response = await fetch(url, { ...init, redirect: 'manual', signal: AbortSignal.timeout(TIMEOUT_MS) });
    await response.arrayBuffer().catch(() => {});
    return { status: response.status, www_authenticate: response.headers.get('www-authenticate') };
}

async function main() {
    const issuer = new URL(env('ISSUER'));
    const client = { client_id: env('CLIENT_ID') };
    const clientAuth = oauth.ClientSecretBasic(env('CLIENT_SECRET'));
    const resource = env('RESOURCE');
    const mcpUrl = new URL(process.env.MCP_URL || resource);
    const insecure = { [oauth.allowInsecureRequests]: true };

    // 1. The authorization server's metadata.
    const as = await oauth.processDiscoveryResponse(
        issuer,
        await oauth.discoveryRequest(issuer, { algorithm: 'oidc', ...insecure }),
    );

    // 2. A DPoP key pair and handle (it also keeps the nonces servers send).
    const keyPair = await oauth.generateKeyPair('ES256');
    const DPoP = oauth.DPoP(client, keyPair);

    // 3. A DPoP-bound token for RESOURCE.
    let tokenType;
    const tokens = await withNonceRetry(async () => {
        const response = await oauth.clientCredentialsGrantRequest(
            as,
            client,
            clientAuth,
            { resource, scope: 'mcp:tools' },
            { DPoP, ...insecure },
        );
        // oauth4webapi lowercases token_type: keep the server's spelling.
        tokenType = await response
            .clone()
            .json()
            .then((body) => body?.token_type)
            .catch(() => undefined);
        return oauth.processClientCredentialsResponse(as, client, response);
    });
    const accessToken = tokens.access_token;
    const out = { token_type: tokenType ?? tokens.token_type, token_claims_cnf: jwtCnf(accessToken) };

    // 4. One tools/call with a DPoP proof. The custom fetch records what was
    // sent, so the last request can be replayed byte for byte.
    let sent;
    const recordingFetch = (url, init) => {
        sent = { url, init };
        return fetch(url, init);
    };
    const call = toolCall(TOOL, {});
    let response;
    try {
        response = await withNonceRetry(() =>
            oauth.protectedResourceRequest(accessToken, 'POST', mcpUrl, call.headers, call.body, {
                DPoP,
                ...insecure,
                [oauth.customFetch]: recordingFetch,
                signal: AbortSignal.timeout(TIMEOUT_MS),
            }),
        );
    } catch (err) {
        // Any WWW-Authenticate challenge (other than a nonce one, retried)
        // rejects: report the answer rather than fail.
        if (!(err instanceof oauth.WWWAuthenticateChallengeError)) throw err;
        console.error(`tools/call: ${err.status}, WWW-Authenticate: ${err.response.headers.get('www-authenticate')}`);
        response = err.response;
    }
    out.ok = await describeCall(response, call.id);

    // 5a. The DPoP-bound token as a plain Bearer token.
    const bearer = toolCall(TOOL, {});
    bearer.headers.set('authorization', `Bearer ${accessToken}`);
    out.as_bearer = await probe(mcpUrl, { method: 'POST', headers: bearer.headers, body: bearer.body });

    // 5b. The request that was answered, proof included, sent again.
    out.replayed = await probe(sent.url, { method: sent.init.method, headers: sent.init.headers, body: sent.init.body });

    // 5c. A fresh proof made (by oauth4webapi) for another URL, sent to MCP_URL.
    const other = new URL(mcpUrl);
    other.pathname = `${other.pathname.replace(/\/$/, '')}/other`;
    const wrong = toolCall(TOOL, {});
    let captured;
    await oauth.protectedResourceRequest(accessToken, 'POST', other, wrong.headers, wrong.body, {
        DPoP,
        ...insecure,
        [oauth.customFetch]: (_url, init) => {
            captured = init;
            return Promise.resolve(new Response(null, { status: 204 }));
        },
    });
    out.wrong_htu = await probe(mcpUrl, { method: 'POST', headers: captured.headers, body: captured.body });

    process.stdout.write(`${JSON.stringify(out)}\n`);
}

// The error, without dumping the objects some errors carry as `cause` (a
// token response body would hold the access token).
function describeError(err) {
    if (!(err instanceof Error)) return String(err);
    let text = err.stack ?? `${err.name}: ${err.message}`;
    if (err.code) text += `\ncode: ${err.code}`;
    if (err instanceof oauth.ResponseBodyError) {
        text += `\nstatus ${err.status}: ${err.error} ${err.error_description ?? ''}`;
    } else if (err instanceof oauth.WWWAuthenticateChallengeError) {
        text += `\nstatus ${err.status}, WWW-Authenticate: ${err.response.headers.get('www-authenticate')}`;
    } else if (err.cause instanceof Error) {
        text += `\ncaused by: ${describeError(err.cause)}`;
    }
    return text;
}

try {
    await main();
} catch (err) {
    console.error(describeError(err));
    process.exit(1);
}
