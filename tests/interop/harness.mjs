// Shared by the suites that drive their own processes (socketio.mjs, node_server.mjs): checks
// with a timeout and ok/FAIL lines, child processes that announce their port on a line of
// their output, and a wsgate of their own (config written to a file, port read back from its
// `listening address=... tls=false` log line, SIGTERM and exit status).
//
// Every child is started with spawn() and killed when the script exits, however it exits.

import { spawn } from 'node:child_process';
import { openSync, writeFileSync, writeSync } from 'node:fs';
import { createInterface } from 'node:readline';

const results = [];

// Runs one check: ok when fn resolves (its value, if any, is printed as the detail), FAIL when
// it throws or takes longer than timeoutMs.
export async function check(name, fn, timeoutMs = 20_000) {
  let timer;
  try {
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs / 1000} s`)), timeoutMs);
    });
    const detail = await Promise.race([fn(), timeout]);
    results.push(['ok', name]);
    console.log(`  ok    ${name}${detail ? ': ' + detail : ''}`);
  } catch (e) {
    results.push(['FAIL', name]);
    console.log(`  FAIL  ${name}: ${e && e.stack ? e.stack : e}`);
  } finally {
    clearTimeout(timer);
  }
}

// Prints the tally; returns the exit status (1 when anything failed or nothing ran).
export function summary(label) {
  const failed = results.filter(([r]) => r === 'FAIL').length;
  const passed = results.filter(([r]) => r === 'ok').length;
  console.log(`${label}: ${passed} passed, ${failed} failed`);
  return failed === 0 && passed > 0 ? 0 : 1;
}

export function fail(message) {
  throw new Error(message);
}

export function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) fail(`${what}: expected ${e}, got ${a}`);
}

// Rejects after ms unless the promise settles first.
export function within(ms, promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const children = new Set();
function killAll() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAll();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}

// A child process whose stdout and stderr lines go to `log` (a file) and to anyone waiting for a
// line that matches. `exited` resolves with { code, signal }.
export class Child {
  constructor(name, command, args, log) {
    this.name = name;
    this.lines = [];
    this.waiters = [];
    this.listeners = [];
    this.out = openSync(log, 'a'); // written synchronously: nothing lost on process.exit()
    this.proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(this.proc);
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => {
        children.delete(this.proc);
        this.exitStatus = { code, signal };
        for (const w of this.waiters.splice(0)) w.reject(new Error(`${name} exited (${code ?? signal}) before printing ${w.pattern}`));
        resolve(this.exitStatus);
      });
    });
    this.proc.once('error', (e) => {
      for (const w of this.waiters.splice(0)) w.reject(e);
    });
    for (const stream of [this.proc.stdout, this.proc.stderr]) {
      createInterface({ input: stream }).on('line', (line) => this.#line(line));
    }
  }

  #line(line) {
    writeSync(this.out, line + '\n');
    this.lines.push(line);
    for (const l of this.listeners) l(line);
    for (const w of [...this.waiters]) {
      const m = line.match(w.pattern);
      if (m) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(m);
      }
    }
  }

  // The first line (from `from` on) matching pattern; resolves with the match.
  waitLine(pattern, { from = 0, timeoutMs = 10_000 } = {}) {
    for (const line of this.lines.slice(from)) {
      const m = line.match(pattern);
      if (m) return Promise.resolve(m);
    }
    if (this.exitStatus) return Promise.reject(new Error(`${this.name} has exited (${this.exitStatus.code ?? this.exitStatus.signal})`));
    return within(
      timeoutMs,
      new Promise((resolve, reject) => this.waiters.push({ pattern, resolve, reject })),
      `${this.name}: a line matching ${pattern}`,
    );
  }

  // Sends sig and resolves with the exit status, SIGKILL after graceMs.
  async stop(sig = 'SIGTERM', graceMs = 10_000) {
    if (this.exitStatus) return this.exitStatus;
    this.proc.kill(sig);
    let timer;
    const status = await Promise.race([
      this.exited,
      new Promise((r) => {
        timer = setTimeout(() => r(null), graceMs);
      }),
    ]);
    clearTimeout(timer);
    if (status) return status;
    this.proc.kill('SIGKILL');
    await this.exited;
    return { code: null, signal: `SIGKILL after ${sig} was ignored for ${graceMs} ms` };
  }
}

// A node script of ours that prints `listening 127.0.0.1:PORT` once it listens on port 0.
export async function startNode(name, script, args, log) {
  const child = new Child(name, process.execPath, [script, ...args], log);
  const m = await child.waitLine(/^listening (127\.0\.0\.1:(\d+))$/);
  child.addr = m[1];
  child.port = Number(m[2]);
  return child;
}

// wsgate with the config text `yaml` (written to `configPath`), stderr appended to `log`.
// Resolves once it logs its plain listener; `.addr` is `127.0.0.1:PORT`.
export async function startWsgate(bin, configPath, yaml, log) {
  writeFileSync(configPath, yaml);
  const child = new Child('wsgate', bin, ['--config', configPath], log);
  const m = await child.waitLine(/listening address=(127\.0\.0\.1:(\d+)) tls=false/);
  child.addr = m[1];
  child.port = Number(m[2]);
  return child;
}

// Collects JSON event lines ({"ev": ...}) a child prints, for checks to wait on.
export class Events {
  constructor(child) {
    this.list = [];
    this.waiters = [];
    const take = (line) => {
      if (!line.startsWith('{')) return;
      let e;
      try {
        e = JSON.parse(line);
      } catch {
        return;
      }
      this.list.push(e);
      for (const w of [...this.waiters]) {
        if (w.pred(e)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(e);
        }
      }
    };
    for (const line of child.lines) take(line);
    child.listeners.push(take);
  }

  wait(pred, what, timeoutMs = 10_000) {
    const found = this.list.find(pred);
    if (found) return Promise.resolve(found);
    return within(timeoutMs, new Promise((resolve) => this.waiters.push({ pred, resolve })), what);
  }
}

// A queue of one socket's incoming messages and its close event: next() resolves with the next
// message ({ data, isBinary }, or null once closed), closed() with { code, reason }; each gives
// up after 10 s. Socket errors are seen as the close code (1006), not thrown.
export function inbox(ws) {
  const messages = [];
  const waiters = [];
  let closed = null;
  const closeWaiters = [];
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    if (waiters.length) waiters.shift()(m);
    else messages.push(m);
  });
  ws.on('error', () => {}); // seen as the close code (1006)
  ws.on('close', (code, reason) => {
    closed = { code, reason: reason.toString() };
    for (const w of closeWaiters.splice(0)) w(closed);
    for (const w of waiters.splice(0)) w(null);
  });
  return {
    next: () => within(10_000, messages.length ? Promise.resolve(messages.shift()) : closed ? Promise.resolve(null) : new Promise((r) => waiters.push(r)), 'a message'),
    closed: () => within(10_000, closed ? Promise.resolve(closed) : new Promise((r) => closeWaiters.push(r)), 'the close'),
  };
}
