// Verify signet-minted JWTs with panva/jose against signet's JWKS endpoints.
//
// Usage: node jose_check.mjs CASES.json   (run from a directory whose
// node_modules holds `jose`; scripts/jose-clients.sh copies it there)
//
// CASES.json is a list of {name, url, token, alg, expect} with expect "ok"
// (must verify) or "no_key" (must fail with ERR_JWKS_NO_MATCHING_KEY). Every
// case uses a fresh createRemoteJWKSet, so nothing is cached between cases.
// Prints one "PASS ..." or "FAIL ..." line per case.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const require = createRequire(import.meta.url);
let joseVersion = '?';
try { joseVersion = require('jose/package.json').version; } catch { /* exports may hide it */ }
if (joseVersion === '?') {
  try {
    joseVersion = JSON.parse(readFileSync(new URL('./node_modules/jose/package.json', import.meta.url))).version;
  } catch { /* keep '?' */ }
}

async function check(c) {
  const JWKS = createRemoteJWKSet(new URL(c.url), { timeoutDuration: 10000, cooldownDuration: 0 });
  try {
    const { payload, protectedHeader } = await jwtVerify(c.token, JWKS, { audience: 'signet' });
    if (c.expect !== 'ok') return [false, `token still verified (kid ${protectedHeader.kid})`];
    if (protectedHeader.alg !== c.alg) return [false, `verified but alg is ${protectedHeader.alg}, want ${c.alg}`];
    if (payload.org !== 'acme') return [false, `verified but org claim is ${payload.org}`];
    return [true, `verified, alg=${protectedHeader.alg} sub=${payload.sub} org=${payload.org}`];
  } catch (e) {
    if (c.expect === 'no_key' && e && e.code === 'ERR_JWKS_NO_MATCHING_KEY') {
      return [true, `rejected as expected (${e.code}: ${e.message})`];
    }
    return [false, `${e && e.code ? e.code : e && e.name}: ${e && e.message}`];
  }
}

const cases = JSON.parse(readFileSync(process.argv[2], 'utf8'));
let failed = 0;
for (const c of cases) {
  const [ok, detail] = await check(c);
  if (!ok) failed++;
  console.log(`${ok ? 'PASS' : 'FAIL'} jose ${joseVersion}: ${c.name} -- ${detail}`);
}
process.exitCode = failed ? 1 : 0;
