// wsgate's sample page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core).
//
// Usage: node browser.mjs --http http://127.0.0.1:PORT --https https://localhost:PORT
//                         --out DIR --log wsgate.log [--trusted]
//
// --trusted: the test CA is in the NSS database under $HOME (run.sh sets HOME for this process),
// so certificate errors are NOT ignored; without it, ignoreHTTPSErrors is used.
//
// 1. http and https: load the page, Connect, Send, see the echo row, Close Socket, see Code: 1000;
//    screenshots page-http.png and page-https.png.
// 2. Origin policy: the /origin route allows only http://allowed.test. The page loaded from wsgate
//    itself (origin http://127.0.0.1:PORT) must fail to connect (403; the log shows an error and a
//    close, no echo) and wsgate must log "upgrade refused"; the same page served as
//    http://allowed.test (answered by the test, never looked up) must get its echo.
//    Screenshots page-origin-refused.png and page-origin-allowed.png.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    http: { type: 'string' },
    https: { type: 'string' },
    out: { type: 'string' },
    log: { type: 'string' },
    trusted: { type: 'boolean', default: false },
  },
});

const results = [];
async function check(name, fn) {
  try {
    const detail = await fn();
    results.push(['ok', name]);
    console.log(`  ok    ${name}${detail ? ': ' + detail : ''}`);
  } catch (e) {
    results.push(['FAIL', name]);
    console.log(`  FAIL  ${name}: ${e && e.message ? e.message : e}`);
  }
}

const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const launch = (extra = []) =>
  chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: [...ARGS, ...extra], timeout: 60_000 });
const browser = await launch();
console.log(`  chromium ${browser.version()}, certificates ${args.trusted ? 'trusted through the test CA' : 'ignored'}`);

async function newPage(b = browser) {
  const context = await b.newContext({
    ignoreHTTPSErrors: !args.trusted,
    viewport: { width: 1000, height: 640 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  return { context, page, consoleLines };
}

const withPageLog = (e, log, consoleLines) =>
  new Error(`${e.message}\n    page log: ${JSON.stringify(log)}\n    console: ${JSON.stringify(consoleLines)}`);
const rows = (page, cls) => page.locator(`#commsLog tr.${cls}`);
const rowTexts = (page) => page.$$eval('#commsLog tbody tr', (trs) => trs.map((tr) => `${tr.className}: ${tr.innerText.replace(/\s+/g, ' ').trim()}`));

// Connect, send, see the echo, close, see 1000.
async function roundTrip(page, message) {
  await page.click('#connectButton');
  await rows(page, 'open').first().waitFor();
  await page.fill('#sendMessage', message);
  await page.click('#sendButton');
  const received = rows(page, 'received').filter({ hasText: message });
  await received.first().waitFor();
  const data = await received.first().locator('td.data').innerText();
  if (data !== message) throw new Error(`received row says ${JSON.stringify(data)}`);
  await page.click('#closeButton');
  const closed = rows(page, 'closed').filter({ hasText: 'Code: 1000' });
  await closed.first().waitFor();
  const state = await page.locator('#stateLabel').innerText();
  if (state !== 'Closed') throw new Error(`state label says ${state}`);
  return `${(await rows(page, 'received').count())} echo row, ${await closed.first().innerText()}`;
}

async function pageTest(base, label, scheme) {
  const { context, page, consoleLines } = await newPage();
  try {
    const resp = await page.goto(base + '/');
    if (!resp || resp.status() !== 200) throw new Error(`page answered ${resp && resp.status()}`);
    const url = await page.inputValue('#connectionUrl');
    if (!url.startsWith(scheme + '://')) throw new Error(`page proposes ${url}, expected ${scheme}://`);
    const detail = await roundTrip(page, `interop ${label} ✓ ${Date.now()}`);
    await page.screenshot({ path: `${args.out}/page-${label}.png`, fullPage: true });
    return `${url}: ${detail}`;
  } catch (e) {
    await page.screenshot({ path: `${args.out}/page-${label}.png`, fullPage: true }).catch(() => {});
    throw withPageLog(e, await rowTexts(page).catch(() => []), consoleLines);
  } finally {
    await context.close();
  }
}

async function originRefused() {
  const { context, page, consoleLines } = await newPage();
  const origin = new URL(args.http).origin;
  const target = args.http.replace(/^http/, 'ws') + '/origin';
  try {
    await page.goto(args.http + '/');
    await page.fill('#connectionUrl', target);
    await page.click('#connectButton');
    await rows(page, 'closed').first().waitFor();
    const log = await rowTexts(page);
    await page.screenshot({ path: `${args.out}/page-origin-refused.png`, fullPage: true });
    if ((await rows(page, 'open').count()) !== 0) throw new Error(`the socket opened: ${JSON.stringify(log)}`);
    if ((await rows(page, 'received').count()) !== 0) throw new Error(`an echo arrived: ${JSON.stringify(log)}`);
    if ((await rows(page, 'error').count()) === 0) throw new Error(`no error row: ${JSON.stringify(log)}`);
    const closedText = await rows(page, 'closed').first().innerText();
    // Chromium says why on the console: "... Unexpected response code: 403".
    const why = consoleLines.find((l) => l.includes(target));
    if (!why || !why.includes('403')) throw new Error(`console does not show a 403: ${JSON.stringify(consoleLines)}`);
    // wsgate's log: one "upgrade refused" naming this page's origin (403 is the only status logged so).
    let line;
    for (let i = 0; i < 50 && !line; i++) {
      line = readFileSync(args.log, 'utf8')
        .split('\n')
        .find((l) => l.includes('upgrade refused') && l.includes(origin));
      if (!line) await new Promise((r) => setTimeout(r, 100));
    }
    if (!line) throw new Error(`wsgate logged no "upgrade refused" for ${origin}`);
    return `${origin} -> ${target}: ${closedText.trim()}, no echo; chromium: ${why.replace(/^error: /, '')}; wsgate: ${line.replace(/^.*?(WARN|INFO)/, '$1').trim()}`;
  } finally {
    await context.close();
  }
}

async function originAllowed() {
  // A page from a public origin (allowed.test) opening a socket to 127.0.0.1 is stopped by
  // Chromium's Local Network Access checks before it reaches wsgate; they are turned off in a
  // browser of its own for this test only. (The refused-origin test needs no such thing: its page
  // and socket are both on 127.0.0.1.)
  const lnaOff = await launch(['--disable-features=LocalNetworkAccessChecks']);
  const { context, page, consoleLines } = await newPage(lnaOff);
  const html = await (await fetch(args.http + '/')).text();
  const target = args.http.replace(/^http/, 'ws') + '/origin';
  // http://allowed.test is answered here with wsgate's own page; nothing is looked up.
  await page.route('http://allowed.test/**', (route) =>
    route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: html }));
  try {
    await page.goto('http://allowed.test/');
    await page.fill('#connectionUrl', target);
    const detail = await roundTrip(page, `from allowed.test ${Date.now()}`);
    await page.screenshot({ path: `${args.out}/page-origin-allowed.png`, fullPage: true });
    return `http://allowed.test -> ${target}: ${detail}`;
  } catch (e) {
    await page.screenshot({ path: `${args.out}/page-origin-allowed.png`, fullPage: true }).catch(() => {});
    throw withPageLog(e, await rowTexts(page).catch(() => []), consoleLines);
  } finally {
    await context.close();
    await lnaOff.close();
  }
}

await check('sample page over http: connect, send, echo, close 1000', () => pageTest(args.http, 'http', 'ws'));
await check('sample page over https: connect, send, echo, close 1000', () => pageTest(args.https, 'https', 'wss'));
await check('disallowed origin refused (403, "upgrade refused" logged)', originRefused);
await check('allowed origin http://allowed.test connects', originAllowed);
await browser.close();

const count = (s) => results.filter((r) => r[0] === s).length;
console.log(`  chromium: ${count('ok')} passed, ${count('FAIL')} failed`);
process.exit(count('FAIL') || !count('ok') ? 1 : 0);
