// Preload for the MCP conformance suite: adds `Authorization: Bearer <token>`
// to every HTTP request the suite sends to the server under test.
//
//   MCP_BEARER_TOKEN=<jwt> MCP_BEARER_ORIGIN=http://127.0.0.1:8080 \
//     node --import ./bearer.mjs node_modules/@modelcontextprotocol/conformance/dist/index.js server --url ...
//
// The same file as tests/conformance/bearer.mjs (each suite directory resolves
// its own undici). The suite (0.1.13, 0.2.0-alpha.12) sends requests two ways, and both are covered:
// - the global `fetch` (the TypeScript SDK's StreamableHTTPClientTransport and
//   the SSE scenarios' raw requests): replaced below;
// - `request` imported from `undici` (dns-rebinding-protection): the resolve
//   hook in undici-hooks.mjs hands the suite undici-bearer.mjs instead, which
//   re-exports undici with `request` wrapped;
// - `request` of Node's `http` module (0.2.0's http-header-validation sends
//   raw requests with it): replaced on the module below.
// Only requests to MCP_BEARER_ORIGIN get the token, and a request that already
// carries an Authorization header keeps its own. Without MCP_BEARER_TOKEN (or
// MCP_BEARER_TOKEN_FILE) this module does nothing, so the same command line
// runs the suite against an unguarded server.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { register, syncBuiltinESMExports } from 'node:module';

const token =
  process.env.MCP_BEARER_TOKEN ||
  (process.env.MCP_BEARER_TOKEN_FILE ? readFileSync(process.env.MCP_BEARER_TOKEN_FILE, 'utf8').trim() : '');
const origin = process.env.MCP_BEARER_ORIGIN || '';

if (token && !origin) {
  throw new Error('bearer.mjs: MCP_BEARER_ORIGIN (e.g. http://127.0.0.1:8080) is required with a token');
}

let added = 0;

function targetsServer(url) {
  try {
    return new URL(String(url)).origin === origin;
  } catch {
    return false;
  }
}

function hasAuthorization(headers) {
  if (!headers) return false;
  if (typeof headers.has === 'function') return headers.has('authorization');
  const names = Array.isArray(headers)
    ? headers.flat().filter((_, i) => i % 2 === 0)
    : Object.keys(headers);
  return names.some((name) => String(name).toLowerCase() === 'authorization');
}

/** Options for `undici.request(url, options)` with the token added when `url` is the server. */
export function authorizeUndici(url, options = {}) {
  if (!token || !targetsServer(url) || hasAuthorization(options.headers)) return options;
  added += 1;
  const headers = options.headers;
  const bearer = `Bearer ${token}`;
  if (headers == null) return { ...options, headers: { authorization: bearer } };
  if (Array.isArray(headers)) return { ...options, headers: [...headers, 'authorization', bearer] };
  if (typeof headers[Symbol.iterator] === 'function' && typeof headers.entries === 'function') {
    return { ...options, headers: [...headers.entries(), ['authorization', bearer]].flat() };
  }
  return { ...options, headers: { ...headers, authorization: bearer } };
}

if (token) {
  const realFetch = globalThis.fetch;
  globalThis.fetch = function fetchWithBearer(input, init) {
    const url = input instanceof Request ? input.url : input;
    if (!targetsServer(url)) return realFetch(input, init);
    const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
    if (!headers.has('authorization')) {
      headers.set('authorization', `Bearer ${token}`);
      added += 1;
    }
    return realFetch(input, { ...init, headers });
  };

  register('./undici-hooks.mjs', import.meta.url);

  // http.request(options[, callback]) or http.request(url[, options][, callback]).
  const realHttpRequest = http.request;
  http.request = function requestWithBearer(...args) {
    const [first] = args;
    const url =
      typeof first === 'string' || first instanceof URL
        ? String(first)
        : `http://${first?.hostname ?? first?.host ?? 'localhost'}:${first?.port ?? 80}`;
    const at = typeof first === 'string' || first instanceof URL ? 1 : 0;
    const options = at === 1 ? (typeof args[1] === 'object' && args[1] !== null ? args[1] : undefined) : first;
    if (!targetsServer(url) || hasAuthorization(options?.headers)) return realHttpRequest.apply(this, args);
    added += 1;
    const withToken = { ...options, headers: { ...options?.headers, authorization: `Bearer ${token}` } };
    if (at === 0) return realHttpRequest.call(this, withToken, ...args.slice(1));
    const rest = options === undefined ? args.slice(1) : args.slice(2);
    return realHttpRequest.call(this, first, withToken, ...rest);
  };
  syncBuiltinESMExports();

  process.on('exit', () => {
    process.stderr.write(`bearer.mjs: added a bearer token to ${added} request(s) to ${origin}\n`);
  });
}
