// What a team writes itself in place of signet's GET /v1/auth: jose's
// jwtVerify over a local JWK Set, on node:http. benches/load.sh runs it as
// an anchor.   node auth.mjs JWKS_FILE PORT AUDIENCE
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createLocalJWKSet, jwtVerify } from 'jose';

const [file, port, audience] = process.argv.slice(2);
const jwks = createLocalJWKSet(JSON.parse(readFileSync(file, 'utf8')));

createServer(async (req, res) => {
  const auth = req.headers.authorization ?? '';
  try {
    if (!auth.startsWith('Bearer ')) throw new Error('no bearer token');
    const { payload } = await jwtVerify(auth.slice(7), jwks, { audience });
    res.writeHead(200, { 'x-org': String(payload.org ?? '') }).end();
  } catch {
    res.writeHead(401).end();
  }
}).listen(Number(port), '127.0.0.1');
