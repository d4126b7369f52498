// A real OAuth 2.0 authorization server for tests/introspection.rs.
//
// oidc-provider (pinned in package.json / package-lock.json), configured with
// RFC 7662 introspection, the client_credentials grant and RFC 8707 resource
// indicators, so that it mints OPAQUE access tokens bound to a resource.
//
//   npm ci --prefix tests/oidc-provider
//   CLIENT_ID=rmcp-guard CLIENT_SECRET=... node tests/oidc-provider/server.js
//
// Listens on 127.0.0.1 and an ephemeral port, then prints one line
// `listening http://127.0.0.1:<port>` (the issuer) on stdout.
// GET /__counts answers {"introspection": n, "token": n}: the Rust tests count
// requests at the provider to prove caching.
//
// Resources: any `resource` is accepted and becomes the token's `aud`; one
// whose path ends in `/short` gets tokens that live 2 seconds.
//
// ACCESS_TOKEN_FORMAT=jwt makes it mint RFC 9068 JWT access tokens (signed
// with its own keys, published at its jwks_uri) instead of opaque ones: that
// is what tests/third_party_as.rs validates with the JWT path.
//
// DPoP (RFC 9449): a token request carrying a `DPoP` proof gets a DPoP-bound
// token (token_type "DPoP"; `cnf.jkt` in a JWT access token, and in the
// introspection answer of an opaque one); a request without a proof keeps
// getting a Bearer token. DPOP_NONCE=1 makes the token endpoint require a
// server-issued nonce in every proof (`use_dpop_nonce` + a `DPoP-Nonce` header
// first). tests/dpop-client is the client side.
import crypto from 'node:crypto';
import http from 'node:http';
import Provider from 'oidc-provider';

const clientId = process.env.CLIENT_ID || 'rmcp-guard';
const clientSecret = process.env.CLIENT_SECRET;
if (!clientSecret) {
  console.error('CLIENT_SECRET is required');
  process.exit(2);
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const counts = { introspection: 0, token: 0 };

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: 'mcp:tools mcp:admin',
      },
    ],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      dPoP: {
        enabled: true,
        ...(process.env.DPOP_NONCE === '1'
          ? { nonceSecret: crypto.randomBytes(32), requireNonce: () => true }
          : {}),
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator) => ({
          scope: 'mcp:tools mcp:admin',
          audience: resourceIndicator,
          accessTokenFormat: process.env.ACCESS_TOKEN_FORMAT === 'jwt' ? 'jwt' : 'opaque',
          accessTokenTTL: resourceIndicator.endsWith('/short') ? 2 : 300,
        }),
      },
    },
    extraTokenClaims: async () => ({ tenant: 'acme', groups: ['netops'] }),
    scopes: ['openid', 'mcp:tools', 'mcp:admin'],
    cookies: { keys: ['test-only-cookie-key'] },
  });
  provider.proxy = false;

  provider.use(async (ctx, next) => {
    if (ctx.path === '/__counts') {
      ctx.body = counts;
      return;
    }
    if (ctx.path === '/token/introspection') counts.introspection += 1;
    if (ctx.path === '/token') counts.token += 1;
    await next();
  });

  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});

process.on('SIGTERM', () => process.exit(0));
