// wsgate against the Node.js `ws` client.
//
// Usage: node ws_client.mjs --ws ws://127.0.0.1:PORT --wss wss://localhost:PORT --ca ca.crt --small-max BYTES
//
// Routes expected (run.sh writes them): /echo, /chat (subprotocols [chat.v1]), /small
// (max_message_size BYTES), /relay and /passthrough (skipped while they answer 501).

import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';
import { inbox } from './harness.mjs';

const { values: args } = parseArgs({
  options: {
    ws: { type: 'string' },
    wss: { type: 'string' },
    ca: { type: 'string' },
    'small-max': { type: 'string' },
  },
});
const ca = readFileSync(args.ca);
const smallMax = Number(args['small-max']);

class Skip extends Error {}
const results = [];

async function check(name, fn) {
  let timer;
  try {
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('timed out after 60 s')), 60_000);
    });
    const detail = await Promise.race([fn(), timeout]);
    results.push(['ok', name]);
    console.log(`  ok    ${name}${detail ? ': ' + detail : ''}`);
  } catch (e) {
    if (e instanceof Skip) {
      results.push(['skip', name]);
      console.log(`  skip  ${name}: ${e.message}`);
    } else {
      results.push(['FAIL', name]);
      console.log(`  FAIL  ${name}: ${e && e.stack ? e.stack : e}`);
    }
  } finally {
    clearTimeout(timer);
  }
}

// Opens a socket; resolves once open. Rejects with Skip on a 501 answer when skip501 is set.
function open(url, { protocols, skip501 = false, ...options } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, { perMessageDeflate: false, ca, maxPayload: 32 << 20, ...options });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => {
      const status = res.statusCode;
      res.resume();
      if (skip501 && status === 501) reject(new Skip('route answers 501 (not implemented yet)'));
      else reject(new Error(`upgrade answered ${status}`));
    });
    ws.once('error', reject);
  });
}


async function echo(url, { skip501 = false } = {}) {
  const ws = await open(url, { skip501 });
  const box = inbox(ws);
  const texts = ['hello', 'héllo wörld ✓ 🚀', ''];
  for (const t of texts) {
    ws.send(t);
    const m = await box.next();
    if (!m || m.isBinary || m.data.toString() !== t) throw new Error(`text echo of ${JSON.stringify(t)} differs`);
  }
  const blobs = [randomBytes(1000), randomBytes(300_000), Buffer.alloc(0)];
  for (const b of blobs) {
    ws.send(b);
    const m = await box.next();
    if (!m || !m.isBinary || !Buffer.from(m.data).equals(b)) throw new Error(`binary echo of ${b.length} bytes differs`);
  }
  // Fragmented: ws sends a message in frames with { fin: false } on all but the last.
  ws.send('frag', { fin: false });
  ws.send('mented', { fin: false });
  ws.send(' ✓', { fin: true });
  const f = await box.next();
  if (!f || f.data.toString() !== 'fragmented ✓') throw new Error(`fragmented echo got ${f && f.data.toString()}`);
  const pong = new Promise((r) => ws.once('pong', (d) => r(d.toString())));
  ws.ping('node ping');
  const pd = await pong;
  if (pd !== 'node ping') throw new Error(`pong payload ${pd}`);
  ws.close(1000, 'done');
  const c = await box.closed();
  if (c.code !== 1000) throw new Error(`closed with ${c.code}`);
  return `${texts.length} text + ${blobs.length} binary + 1 fragmented message, ping/pong, close ${c.code}`;
}

async function closeCode(url, { skip501 = false } = {}) {
  const ws = await open(url, { skip501 });
  const box = inbox(ws);
  ws.close(4001, 'node bye');
  const c = await box.closed();
  if (c.code !== 4001) throw new Error(`sent 4001, got ${c.code} ${c.reason}`);
  return `sent 4001, received ${c.code} '${c.reason}'`;
}

async function subprotocol(base) {
  const ws = await open(base + '/chat', { protocols: ['chat.v0', 'chat.v1'] });
  if (ws.protocol !== 'chat.v1') throw new Error(`negotiated ${JSON.stringify(ws.protocol)}`);
  ws.close();
  await inbox(ws).closed();
  // Nothing listed offered: wsgate answers 101 without Sec-WebSocket-Protocol. ws fails such a
  // handshake itself ("Server sent no subprotocol"; RFC 6455 lets a client do so), so either
  // outcome is fine as long as no protocol is picked.
  let other;
  try {
    const ws2 = await open(base + '/chat', { protocols: ['other.v9'] });
    other = `offered other.v9: opened with '${ws2.protocol}'`;
    if (ws2.protocol !== '') throw new Error(other);
    ws2.close();
  } catch (e) {
    if (e.message === 'Server sent no subprotocol') other = 'offered other.v9: none picked (ws then gives up: "Server sent no subprotocol")';
    else throw e;
  }
  // No offer: no protocol.
  const ws3 = await open(base + '/chat');
  if (ws3.protocol !== '') throw new Error(`no offer: got '${ws3.protocol}'`);
  ws3.close();
  return `chat.v1 negotiated; ${other}; no offer -> none`;
}

async function tooBig(base) {
  const ws = await open(base + '/small');
  const box = inbox(ws);
  ws.send(Buffer.alloc(smallMax, 1));
  const m = await box.next();
  if (!m || m.data.length !== smallMax) throw new Error('a message of exactly max_message_size was not echoed');
  ws.send(Buffer.alloc(smallMax + 1, 2));
  const after = await box.next();
  if (after !== null) throw new Error(`a ${smallMax + 1}-byte message was echoed`);
  const c = await box.closed();
  if (c.code !== 1009) throw new Error(`closed with ${c.code} '${c.reason}', expected 1009`);
  return `${smallMax} B echoed; ${smallMax + 1} B -> ${c.code} '${c.reason}'`;
}

async function tlsEcho(base) {
  return echo(base + '/echo');
}

await check('echo text/binary/fragmented/ping over ws://', () => echo(args.ws + '/echo'));
await check('echo over wss:// (TLS, verified against the test CA)', () => tlsEcho(args.wss));
await check('subprotocol negotiation', () => subprotocol(args.ws));
await check('close code 4001 echoed', () => closeCode(args.ws + '/echo'));
await check('max_message_size exceeded -> 1009', () => tooBig(args.ws));
for (const mode of ['relay', 'passthrough']) {
  await check(`${mode}: echo through the upstream`, () => echo(`${args.ws}/${mode}`, { skip501: true }));
  await check(`${mode}: close code 4001`, () => closeCode(`${args.ws}/${mode}`, { skip501: true }));
}

const count = (s) => results.filter((r) => r[0] === s).length;
console.log(`  node ws: ${count('ok')} passed, ${count('FAIL')} failed, ${count('skip')} skipped`);
process.exit(count('FAIL') || !count('ok') ? 1 : 0);
