// One socket.io 4 server instance for the socketio suite (socketio.mjs starts two behind one
// wsgate route). Listens on 127.0.0.1, port 0, and prints `listening 127.0.0.1:PORT`.
//
// Usage: node socketio_server.mjs --id A
//
// The "echo" event is answered through its ack with { instance, transport, msg }: which
// instance answered, the transport the session was on, and the message as it arrived (binary
// attachments included). On stdout, one JSON line per HTTP request or upgrade that reaches the
// instance ({ ev: "request", instance, method, transport, sid, cookie }) and per engine.io
// connection error ({ ev: "connection_error", instance, code, message, sid }), for the checks,
// plus connection, upgrade and disconnect events of the sessions.

import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import { Server } from 'socket.io';

const { values: args } = parseArgs({ options: { id: { type: 'string' } } });
const instance = args.id;
const emit = (e) => process.stdout.write(JSON.stringify({ ...e, instance }) + '\n');

const http = createServer();
const seen = (req) => {
  const q = new URL(req.url, 'http://x').searchParams;
  emit({
    ev: 'request',
    method: req.method,
    upgrade: (req.headers.upgrade || '').toLowerCase() === 'websocket',
    transport: q.get('transport'),
    sid: q.get('sid'),
    cookie: req.headers.cookie ?? null,
  });
};

// pingInterval 1 s (default 25 s): a held long-polling GET is answered by the server's Ping
// within a second, so a check can see sessions live through ping cycles quickly. cookie: the
// app sets its own cookie (io=<session id>) on the handshake, next to wsgate's.
const io = new Server(http, { serveClient: false, maxHttpBufferSize: 4e6, pingInterval: 1000, cookie: true });
// In front of engine.io's own listeners (which it installs in place of any others), so every
// request and upgrade is seen, refused ones too. GET /flush?token=T (straight to the instance,
// not through wsgate) prints { ev: "flush", token }: once a reader has that line, it has every
// line printed before it.
const engineHandlers = http.listeners('request');
http.removeAllListeners('request');
http.on('request', (req, res) => {
  if (req.url.startsWith('/flush?')) {
    emit({ ev: 'flush', token: new URL(req.url, 'http://x').searchParams.get('token') });
    res.end('flushed');
    return;
  }
  seen(req);
  for (const h of engineHandlers) h.call(http, req, res);
});
http.prependListener('upgrade', seen);
io.engine.on('connection_error', (err) => {
  const q = new URL(err.req.url, 'http://x').searchParams;
  emit({ ev: 'connection_error', code: err.code, message: err.message, sid: q.get('sid') });
});
io.on('connection', (socket) => {
  emit({ ev: 'connection', sid: socket.conn.id, transport: socket.conn.transport.name });
  socket.on('echo', (msg, ack) => {
    if (typeof ack === 'function') ack({ instance, transport: socket.conn.transport.name, msg });
  });
  socket.conn.on('upgrade', (t) => emit({ ev: 'upgrade', sid: socket.conn.id, transport: t.name }));
  socket.on('disconnect', (reason) => emit({ ev: 'disconnect', sid: socket.conn.id, reason }));
});

http.listen(0, '127.0.0.1', () => {
  console.log(`listening 127.0.0.1:${http.address().port}`);
});
