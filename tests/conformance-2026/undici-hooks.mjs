// Module resolve hook (registered by bearer.mjs): every `import ... from 'undici'`
// except the shim's own gets undici-bearer.mjs.
const shim = new URL('./undici-bearer.mjs', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier === 'undici' && context.parentURL !== shim) {
    return { url: shim, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
