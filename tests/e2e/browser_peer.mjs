#!/usr/bin/env node
// browser_peer.mjs - headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// as one WebRTC peer of the turnpike e2e tests. Run it inside a lab namespace
// (`ip netns exec te-c1 node browser_peer.mjs ...`): Chromium, started by this process,
// then lives behind that namespace's NAT too.
//
// It serves page/ on http://127.0.0.1:PORT (the namespace's own loopback; the page's origin
// must be in turnpike's --api-cors-origin list), opens it, and from the page:
//   --case call        fetches iceServers from <api>/api/v1/ice (cross-origin, bearer token),
//                      relay-only ICE, sends --file over a data channel in 16 KiB chunks (and
//                      with --video the fake camera's track), signals with the aiortc peer
//                      through files in --signal-dir (offer.json / answer.json), checks the
//                      peer's SHA-256 and, with --video, inbound-rtp framesDecoded > 0 of
//                      the peer's video; waits for the peer's peer_result.json.
//   --case lifecycle   --case expired, then --case call in the same page (fresh credential)
//   --case expired     fetches a credential with ttl=1, waits until it has expired, and
//                      gathers relay-only candidates with it: must gather no relay candidate
//                      (turnpike refuses the Allocate; Chromium reports icecandidateerror).
// Options: --api URL --token T --signal-dir D --file F --video --prefer STR (keep only TURN
// URLs containing STR, e.g. "turns:") --port N --timeout SECONDS.
// --turn URL --username U --credential C (--case call only): this one TURN server instead
// of /api/v1/ice, for a lab whose API the client cannot reach (tests/integration/xdp.rs).
// Prints one JSON line {"ok":...}; exit 0 only if ok.
import { createServer } from 'node:http';
import { readFile, writeFile, rename, unlink } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { join, extname, basename, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs as parseCliArgs } from 'node:util';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const PAGE_DIR = join(HERE, 'page');

function parseArgs(argv) {
  const { values: v } = parseCliArgs({
    args: argv,
    options: {
      case: { type: 'string', default: 'call' },
      api: { type: 'string' },
      token: { type: 'string', default: '' },
      'signal-dir': { type: 'string' },
      file: { type: 'string' },
      prefer: { type: 'string', default: '' },
      port: { type: 'string', default: '8000' },
      timeout: { type: 'string', default: '60' },
      video: { type: 'boolean', default: false },
      chromium: { type: 'string' },
      turn: { type: 'string' },
      username: { type: 'string' },
      credential: { type: 'string' },
    },
  });
  const args = { ...v, signalDir: v['signal-dir'], port: Number(v.port), timeout: Number(v.timeout) };
  if (args.turn) {
    if (args.case !== 'call' || !args.username || !args.credential) throw new Error('--turn needs --case call, --username and --credential');
  } else if (!args.api) throw new Error('--api (or --turn) is required');
  if (args.case !== 'expired' && (!args.signalDir || !args.file)) throw new Error(`--case ${args.case} needs --signal-dir and --file`);
  return args;
}

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };

function serve(port) {
  const server = createServer(async (req, res) => {
    const name = new URL(req.url, 'http://x').pathname.replace(/^\/$/, '/index.html');
    if (name === '/favicon.ico') return res.writeHead(204).end();
    const file = join(PAGE_DIR, basename(name)); // flat directory: no traversal
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] || 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

async function writeJson(path, obj) {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(obj));
  await rename(tmp, path); // atomic: the peer never reads half a file
}

async function readJson(path, deadline, what) {
  for (;;) {
    try {
      return JSON.parse(await readFile(path, 'utf8'));
    } catch { /* not there yet */ }
    if (Date.now() > deadline) throw new Error(`timeout waiting for ${what} (${path})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function describePair(pair) {
  if (!pair) return 'none';
  const side = (c) => `${c.type} ${c.address}${c.relayProtocol ? ` (relay over ${c.relayProtocol})` : ''}`;
  return `${side(pair.local)} <-> ${side(pair.remote)}`;
}

async function callCase(page, args, result, deadline) {
  const ms = Math.max(1000, deadline - Date.now());
  await page.setInputFiles('#file', args.file);
  let servers;
  if (args.turn) servers = [{ urls: args.turn, username: args.username, credential: args.credential }];
  else servers = (await page.evaluate(([api, token]) => window.e2e.fetchIce(api, token, 'browser', 0), [args.api, args.token])).iceServers;
  if (args.prefer) servers = await page.evaluate(([s, p]) => window.e2e.onlyTurn(s, p), [servers, args.prefer]);
  result.ice_urls = servers.flatMap((s) => [].concat(s.urls));
  const offer = await page.evaluate(([s, video]) => window.e2e.makeOffer(s, { video }), [servers, args.video]);
  result.gathered = offer.candidates;
  result.candidate_errors = offer.errors;
  if (!offer.candidates.some((c) => c.startsWith('relay '))) throw new Error('no relay candidate gathered');
  const id = randomBytes(8).toString('hex');
  const answerPath = join(args.signalDir, 'answer.json');
  await writeJson(join(args.signalDir, 'offer.json'), { id, type: 'offer', sdp: offer.sdp });
  const answer = await readJson(answerPath, deadline, 'the answer');
  if (answer.id !== id) throw new Error('answer is for another offer');
  await page.evaluate((sdp) => window.e2e.acceptAnswer(sdp), answer.sdp);
  const sent = await page.evaluate((t) => window.e2e.sendFile(t), ms);
  result.transfer = sent;
  const expected = createHash('sha256').update(await readFile(args.file)).digest('hex');
  if (sent.sha256 !== expected) throw new Error(`browser read the file with hash ${sent.sha256}, expected ${expected}`);
  if (sent.peer_sha256 !== expected || sent.peer_bytes !== sent.bytes) {
    throw new Error(`peer received ${sent.peer_bytes} bytes with hash ${sent.peer_sha256}, sent ${sent.bytes} with ${expected}`);
  }
  if (args.video) {
    result.inbound_video = await page.evaluate(() => window.e2e.waitFramesDecoded(5, 15000));
  }
  const stats = await page.evaluate(() => window.e2e.stats());
  result.pair = stats.pair;
  result.selected_pair = describePair(stats.pair);
  result.outbound_video = stats.outbound_video;
  await page.evaluate(() => window.e2e.bye());
  result.peer = await readJson(join(args.signalDir, 'peer_result.json'), deadline, "the aiortc peer's result");
  const problems = [];
  if (!stats.pair || stats.pair.local.type !== 'relay' || stats.pair.remote.type !== 'relay') {
    problems.push(`selected pair is not relay/relay: ${result.selected_pair}`);
  }
  if (args.video) {
    if (!result.inbound_video || !(result.inbound_video.framesDecoded > 0)) problems.push('browser inbound-rtp video: no frames decoded');
    if (!(result.peer.video_frames_decoded > 0)) problems.push('aiortc decoded no frames of the browser\'s camera track');
  }
  if (!result.peer.ok) problems.push(`aiortc peer failed: ${result.peer.error}`);
  if (result.peer.sha256 !== expected) problems.push('aiortc peer reported another hash');
  if (problems.length) throw new Error(problems.join('; '));
}

async function expiredCase(page, args, result) {
  const ice = await page.evaluate(([api, token]) => window.e2e.fetchIce(api, token, 'expired', 1), [args.api, args.token]);
  let servers = ice.iceServers;
  if (args.prefer) servers = await page.evaluate(([s, p]) => window.e2e.onlyTurn(s, p), [servers, args.prefer]);
  const turn = servers.find((s) => s.username !== undefined);
  if (!turn) throw new Error('no TURN entry in iceServers');
  const expiry = Number(turn.username.split(':')[0]);
  result.username = turn.username;
  result.ttl = ice.ttl;
  // Wait until the credential is past its expiry time (turnpike refuses it from that second).
  const wait = expiry * 1000 + 1100 - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  result.waited_ms = Math.max(0, Math.round(wait));
  result.ice_urls = servers.flatMap((s) => [].concat(s.urls));
  const g = await page.evaluate((s) => window.e2e.gatherOnly(s, 15000), servers);
  result.gathered = g.candidates;
  result.candidate_errors = g.errors;
  result.selected_pair = 'none (no relay candidate to pair)';
  if (g.candidates.some((c) => c.startsWith('relay '))) throw new Error(`expired credential still allocated: ${g.candidates}`);
  if (!g.errors.some((e) => e.errorCode === 401)) {
    throw new Error(`expected icecandidateerror 401 from turnpike, got ${JSON.stringify(g.errors)}`);
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  const deadline = t0 + args.timeout * 1000;
  const result = { ok: false, case: args.case, error: null };
  let server;
  let browser;
  try {
    server = await serve(args.port);
    browser = await chromium.launch({
      executablePath: args.chromium || '/usr/bin/chromium',
      headless: true,
      timeout: 30000,
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
        // turnpike's lab certificate is self-signed; this only affects the TURN/TLS socket
        // (the page itself is plain http on loopback).
        '--ignore-certificate-errors',
      ],
    });
    result.browser = `chromium ${browser.version()}`;
    const context = await browser.newContext({ permissions: ['camera'] });
    const page = await context.newPage();
    page.on('console', (m) => { if (m.type() === 'error') process.stderr.write(`[page] ${m.text()}\n`); });
    page.on('pageerror', (e) => process.stderr.write(`[page error] ${e}\n`));
    await page.goto(`http://127.0.0.1:${args.port}/`);
    if (args.case === 'call') await callCase(page, args, result, deadline);
    else if (args.case === 'expired') await expiredCase(page, args, result);
    else if (args.case === 'lifecycle') {
      // the same page: an expired credential must not allocate, a fresh one must connect
      const expired = {};
      await expiredCase(page, args, expired);
      result.expired = expired;
      await callCase(page, args, result, deadline);
    }
    else throw new Error(`unknown case ${args.case}`);
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.message ? e.message.split('\n')[0] : e);
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (server) server.close();
    if (args.signalDir) await unlink(join(args.signalDir, 'offer.json')).catch(() => {});
  }
  result.elapsed_s = Math.round((Date.now() - t0) / 10) / 100;
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(result.ok ? 0 : 1);
}

main();
