// The TypeScript MCP SDK's client (npm @modelcontextprotocol/client) going
// through the whole OAuth flow against a guarded server, headless, with a
// Client ID Metadata Document. Run by tests/ts_client.rs; not on its own.
//
// Input (environment):
//   MCP_URL    the guarded MCP endpoint (the quickstart's)
//   TLS_KEY    PEM key and
//   TLS_CERT   certificate for 127.0.0.1, for serving the metadata document
//              over https (the SDK, like the draft, wants an https client_id)
//   MCP_PROTOCOL  "2026-07-28" to pin the modern era, or "auto"
// Output: one JSON object on stdout; exit status 0 when the flow completed.

import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

import { Client, StreamableHTTPClientTransport, UnauthorizedError } from '@modelcontextprotocol/client';

const env = (name) => {
    const value = process.env[name];
    if (!value) throw new Error(`${name} is not set`);
    return value;
};
const mcpUrl = new URL(env('MCP_URL'));
const protocol = process.env.MCP_PROTOCOL ?? 'auto';

// A redirect URI that is never contacted: the script reads the code from the
// authorization server's redirect itself.
const redirectUrl = 'http://127.0.0.1:9/callback';

// 1. The client's metadata document, served over https on a loopback port.
let documentFetches = 0;
let clientId;
const documentServer = createServer(
    { key: readFileSync(env('TLS_KEY')), cert: readFileSync(env('TLS_CERT')) },
    (request, response) => {
        if (request.method === 'GET' && request.url === '/oauth/client.json') {
            documentFetches += 1;
            response.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=60' });
            response.end(
                JSON.stringify({
                    client_id: clientId,
                    client_name: 'rmcp-guard ts-client test',
                    redirect_uris: [redirectUrl],
                    grant_types: ['authorization_code', 'refresh_token'],
                    response_types: ['code'],
                    token_endpoint_auth_method: 'none',
                }),
            );
        } else {
            response.writeHead(404).end();
        }
    },
);
await new Promise((resolve) => documentServer.listen(0, '127.0.0.1', resolve));
clientId = `https://127.0.0.1:${documentServer.address().port}/oauth/client.json`;

// 2. A headless OAuthClientProvider: everything in memory; the "browser" is
// a fetch that does not follow the authorization server's redirect.
const saved = { client: undefined, tokens: undefined, verifier: undefined, discovery: undefined, authorizationUrl: undefined };
let registrations = 0;
const provider = {
    get redirectUrl() {
        return redirectUrl;
    },
    clientMetadataUrl: clientId,
    get clientMetadata() {
        return {
            client_name: 'rmcp-guard ts-client test',
            redirect_uris: [redirectUrl],
            grant_types: ['authorization_code', 'refresh_token'],
            response_types: ['code'],
            token_endpoint_auth_method: 'none',
        };
    },
    clientInformation: () => saved.client,
    saveClientInformation: (info) => {
        registrations += 1;
        saved.client = info;
    },
    tokens: () => saved.tokens,
    saveTokens: (tokens) => {
        saved.tokens = tokens;
    },
    redirectToAuthorization: (url) => {
        saved.authorizationUrl = new URL(url);
    },
    saveCodeVerifier: (verifier) => {
        saved.verifier = verifier;
    },
    codeVerifier: () => saved.verifier,
    // Kept with the code verifier, so the SDK can check on the callback leg
    // that the code comes from the authorization server it discovered.
    saveDiscoveryState: (state) => {
        saved.discovery = state;
    },
    discoveryState: () => saved.discovery,
};

const clientOptions =
    protocol === 'auto' ? { versionNegotiation: { mode: 'auto' } } : { versionNegotiation: { mode: { pin: protocol } } };
const newClient = () => new Client({ name: 'rmcp-guard-ts-client', version: '1.0.0' }, clientOptions);

const result = { clientIdMetadataUrl: clientId };
try {
    // 3. No token yet: the 401 starts discovery and authorization.
    let first = newClient();
    let transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
    try {
        await first.connect(transport);
        throw new Error('connected without authorization');
    } catch (error) {
        if (!(error instanceof UnauthorizedError)) throw error;
    }
    const authorizationUrl = saved.authorizationUrl;
    if (!authorizationUrl) throw new Error('the SDK did not ask to open an authorization URL');
    result.authorizationEndpoint = `${authorizationUrl.origin}${authorizationUrl.pathname}`;
    result.authorizationClientId = authorizationUrl.searchParams.get('client_id');
    result.codeChallengeMethod = authorizationUrl.searchParams.get('code_challenge_method');
    result.resource = authorizationUrl.searchParams.get('resource');

    // 4. The development authorization server approves at once (its demo
    // user, no login): its answer is a redirect carrying the code.
    const approval = await fetch(authorizationUrl, { redirect: 'manual' });
    result.authorizationStatus = approval.status;
    const location = approval.headers.get('location');
    if (!location) throw new Error(`no redirect from /authorize: ${approval.status} ${await approval.text()}`);
    const callback = new URL(location);
    if (callback.searchParams.get('error')) {
        throw new Error(`authorization refused: ${callback.searchParams.get('error')} ${callback.searchParams.get('error_description')}`);
    }
    await transport.finishAuth(callback.searchParams);
    await first.close().catch(() => {});
    result.registrations = registrations;
    result.storedClientId = saved.client?.client_id ?? null;
    result.tokenType = saved.tokens?.token_type ?? null;
    result.hasRefreshToken = typeof saved.tokens?.refresh_token === 'string';

    // 5. With the token: connect, list the tools, call one.
    const client = newClient();
    transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
    await client.connect(transport);
    result.protocolVersion = client.getNegotiatedProtocolVersion?.() ?? transport.protocolVersion ?? null;
    const tools = await client.listTools();
    result.tools = tools.tools.map((t) => t.name).sort();
    const call = await client.callTool({ name: 'whoami', arguments: {} });
    result.whoami = call.content?.[0]?.text ?? null;
    result.isError = call.isError ?? false;
    await client.close();
    result.documentFetches = documentFetches;
    result.ok = true;
} catch (error) {
    result.ok = false;
    result.error = String(error?.stack ?? error);
    result.documentFetches = documentFetches;
}
documentServer.close();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(result.ok ? 0 : 1);
