// undici, with `request` adding the bearer token (see bearer.mjs).
import * as undici from 'undici';
import { authorizeUndici } from './bearer.mjs';

export * from 'undici';

export function request(url, options) {
  return undici.request(url, authorizeUndici(url, options));
}
