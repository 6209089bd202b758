// A Node `ws` server as wsgate's upstream, for the node-server suite (node_server.mjs starts it).
// Listens on 127.0.0.1, port 0, and prints `listening 127.0.0.1:PORT`.
//
// Usage: node ws_server.mjs
//
// Echoes every message with its type (text or binary); permessage-deflate is on, so it is
// negotiated whenever a client's offer reaches it. Text messages starting with "cmd:" are
// commands instead:
//   cmd:close4002   close with 4002 "server bye"
//   cmd:ping        send a Ping "up ping" (the Pong is reported)
//   cmd:fragments   send "upstream" as three fragments: "up", "str", "eam"
//   cmd:big         send a binary message of 1 MiB + 1 byte (zeros)
//   cmd:stream      send "tick 1", "tick 2", ... every 5 ms until the connection ends
//   cmd:partial     stop the ticks, send the first fragment of a message ("half a mess", not
//                   final) and never the rest; reported once written
// Query parameters of the upgrade: id (names the connection in the reports), pick (the
// subprotocol to choose: chosen only when offered, except "evil.v9", which is chosen always).
//
// Reports, one JSON line each on stdout: { ev: "open", id, url, protocols, protocol,
// extensions }, { ev: "ping" | "pong", id, data }, { ev: "partial", id },
// { ev: "close", id, code, reason }.

import { WebSocketServer } from 'ws';

const report = (e) => process.stdout.write(JSON.stringify(e) + '\n');
const query = (req) => new URL(req.url, 'http://x').searchParams;

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: true,
  maxPayload: 32 << 20,
  handleProtocols: (protocols, req) => {
    const pick = query(req).get('pick');
    if (pick === 'evil.v9') return pick;
    return pick && protocols.has(pick) ? pick : false;
  },
});

wss.on('connection', (ws, req) => {
  const id = query(req).get('id');
  const offered = req.headers['sec-websocket-protocol'];
  report({
    ev: 'open',
    id,
    url: req.url,
    protocols: offered ? offered.split(',').map((p) => p.trim()) : [],
    protocol: ws.protocol,
    extensions: req.headers['sec-websocket-extensions'] ?? null,
  });
  let ticker = null;
  ws.on('message', (data, isBinary) => {
    const text = isBinary ? null : data.toString();
    if (text === 'cmd:close4002') ws.close(4002, 'server bye');
    else if (text === 'cmd:ping') ws.ping('up ping');
    else if (text === 'cmd:big') ws.send(Buffer.alloc((1 << 20) + 1));
    else if (text === 'cmd:fragments') {
      ws.send('up', { fin: false });
      ws.send('str', { fin: false });
      ws.send('eam', { fin: true });
    } else if (text === 'cmd:stream') {
      let n = 0;
      ticker = setInterval(() => ws.send(`tick ${++n}`), 5);
    } else if (text === 'cmd:partial') {
      clearInterval(ticker);
      ws.send('half a mess', { fin: false }, () => report({ ev: 'partial', id }));
    } else ws.send(data, { binary: isBinary });
  });
  ws.on('ping', (d) => report({ ev: 'ping', id, data: d.toString() }));
  ws.on('pong', (d) => report({ ev: 'pong', id, data: d.toString() }));
  ws.on('close', (code, reason) => {
    clearInterval(ticker);
    report({ ev: 'close', id, code, reason: reason.toString() });
  });
  ws.on('error', () => {}); // reported through close
});

wss.on('listening', () => console.log(`listening 127.0.0.1:${wss.address().port}`));
