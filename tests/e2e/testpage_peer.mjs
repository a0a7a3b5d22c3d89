#!/usr/bin/env node
// testpage_peer.mjs - headless Chromium (Debian's, driven by playwright-core) on turnpike's
// own test pages (api.test_page), run inside a lab namespace (`ip netns exec te-c1 node ...`).
//
//   --case testpage --url http://SRV:8080/test#token=T
//       loads the ICE test page, waits for its verdict, and requires a relay candidate and an
//       OK verdict for every turn:/turns: URL.
//   --case call --url http://SRV:8080/test/call#room=R&token=T --role sender|receiver
//       joins the room with "relay only" (the page's default), waits until the other
//       participant's video decodes (inbound-rtp framesDecoded > 0); the sender then sends
//       --file over the data channel and waits for the receiver's SHA-256; the receiver waits
//       for the file and checks its SHA-256 against --expect-sha256. Both require the
//       selected candidate pair to be relay/relay.
// Options: --camera (let the page use Chromium's fake camera: the http lab origin is treated
// as secure; without it the page sends its canvas test pattern), --screenshot PNG (1000 px
// wide), --timeout SECONDS, --chromium PATH.
// Prints one JSON line {"ok":...}; exit 0 only if ok.
import { parseArgs as parseCliArgs } from 'node:util';
import { chromium } from 'playwright-core';

function parseArgs(argv) {
  const { values: v } = parseCliArgs({
    args: argv,
    options: {
      case: { type: 'string' },
      url: { type: 'string' },
      role: { type: 'string' },
      file: { type: 'string' },
      'expect-sha256': { type: 'string' },
      screenshot: { type: 'string' },
      timeout: { type: 'string', default: '60' },
      camera: { type: 'boolean', default: false },
      chromium: { type: 'string' },
    },
  });
  const args = { ...v, expect: v['expect-sha256'], timeout: Number(v.timeout) };
  if (!args.url || !['testpage', 'call'].includes(args.case)) throw new Error('--case testpage|call and --url are required');
  if (args.case === 'call' && !['sender', 'receiver'].includes(args.role)) throw new Error('--role sender|receiver');
  if (args.role === 'sender' && !args.file) throw new Error('the sender needs --file');
  return args;
}

async function testpageCase(page, args, result, ms) {
  await page.goto(args.url);
  await page.waitForSelector('body[data-done="true"]', { timeout: ms });
  result.status = await page.textContent('#status');
  result.verdicts = await page.$$eval('#verdicts tbody tr', (rows) => rows.map((r) => {
    const td = r.querySelectorAll('td');
    return { url: td[0].textContent, expects: td[1].textContent, verdict: td[2].textContent, ok: td[2].className === 'ok' };
  }));
  result.candidates = await page.$$eval('#candidates tbody tr', (rows) => rows.map((r) => {
    const td = [...r.querySelectorAll('td')].map((x) => x.textContent);
    return { ms: Number(td[0]), url: td[1], type: td[2], protocol: td[3], address: `${td[4]}:${td[5]}` };
  }));
  const relay = result.candidates.filter((c) => c.type === 'relay');
  const turn = result.verdicts.filter((v) => /^turns?:/.test(v.url));
  const problems = [];
  if (!relay.length) problems.push('no relay candidate listed');
  if (!turn.length) problems.push('no turn: URL in the verdict table');
  for (const v of turn) if (!v.ok) problems.push(`${v.url}: ${v.verdict}`);
  for (const v of turn) {
    const first = relay.find((c) => c.url === v.url);
    if (first) v.first_relay_ms = first.ms;
  }
  if (problems.length) throw new Error(problems.join('; '));
}

async function callCase(page, args, result, deadline) {
  const left = () => Math.max(1000, deadline - Date.now());
  const t0 = Date.now();
  await page.goto(args.url);
  if (!(await page.isChecked('#relay'))) throw new Error('"relay only" is not checked by default');
  await page.click('#join');
  await page.waitForSelector('body[data-connected="true"]', { timeout: left() });
  result.connected_ms = Date.now() - t0;
  await page.waitForSelector('body[data-frames-decoded]', { timeout: left() });
  result.frames_ms = Date.now() - t0;
  if (args.role === 'sender') {
    await page.setInputFiles('#file', args.file);
    await page.waitForSelector('#send:not([disabled])', { timeout: left() });
    await page.click('#send');
    await page.waitForSelector('body[data-sent]', { timeout: left() });
  } else {
    await page.waitForSelector('body[data-received]', { timeout: left() });
  }
  // The pair the call used, read at once: the other side may hang up during the wait below,
  // and a closed ICE transport no longer names its selected pair.
  const done = await page.evaluate(() => window.testcall.summary());
  // Let a few more frames arrive for the screenshot and the stats.
  await page.waitForTimeout(1000);
  const later = await page.evaluate(() => window.testcall.summary());
  // The other side may have hung up by then too, and Chromium drops a closed call's
  // inbound-rtp stats: keep the reading with more frames.
  const frames = (x) => (x.inbound_video && x.inbound_video.framesDecoded) || 0;
  const inbound = frames(later) >= frames(done) ? later.inbound_video : done.inbound_video;
  const s = { ...later, pair: done.pair || later.pair, inbound_video: inbound };
  Object.assign(result, {
    media: s.media, policy: s.policy, pair: s.pair, selected_pair: s.pair ? s.pair.text : 'none',
    inbound_video: s.inbound_video, outbound_video: s.outbound_video, sent: s.sent, received: s.received,
  });
  if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
  const problems = [];
  if (!s.pair || s.pair.local.type !== 'relay' || s.pair.remote.type !== 'relay') problems.push(`selected pair is not relay/relay: ${result.selected_pair}`);
  if (!(s.inbound_video && s.inbound_video.framesDecoded > 0)) problems.push('no video frames decoded');
  if (args.role === 'sender' && !(s.sent && s.sent.ok)) problems.push(`receiver's hash does not match: ${JSON.stringify(s.sent)}`);
  if (args.role === 'receiver') {
    if (!(s.received && s.received.ok)) problems.push(`file corrupt: ${JSON.stringify(s.received)}`);
    else if (args.expect && s.received.sha256 !== args.expect) problems.push(`received SHA-256 ${s.received.sha256}, the file's is ${args.expect}`);
  }
  // The receiver's ack travels on the data channel: do not hang up right away.
  await page.waitForTimeout(args.role === 'receiver' ? 2000 : 200);
  if (problems.length) throw new Error(problems.join('; '));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  const deadline = t0 + args.timeout * 1000;
  const result = { ok: false, case: args.case, role: args.role || null, error: null };
  let browser;
  try {
    const origin = new URL(args.url).origin;
    browser = await chromium.launch({
      executablePath: args.chromium || '/usr/bin/chromium',
      headless: true,
      timeout: 30000,
      args: [
        '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
        // the lab's self-signed certificate, for turns: only
        '--ignore-certificate-errors',
        ...(args.camera ? [`--unsafely-treat-insecure-origin-as-secure=${origin}`] : []),
      ],
    });
    result.browser = `chromium ${browser.version()}`;
    const context = await browser.newContext({
      viewport: { width: 1000, height: 700 },
      ...(args.camera ? { permissions: ['camera'] } : {}),
    });
    const page = await context.newPage();
    page.on('pageerror', (e) => process.stderr.write(`[page error] ${e}\n`));
    page.on('console', (m) => { if (m.type() === 'error') process.stderr.write(`[page] ${m.text()}\n`); });
    if (args.case === 'testpage') {
      await testpageCase(page, args, result, Math.max(1000, deadline - Date.now()));
      if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    } else {
      await callCase(page, args, result, deadline);
    }
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.message ? e.message.split('\n')[0] : e);
  } finally {
    if (browser) await browser.close().catch(() => {});
  }
  result.elapsed_s = Math.round((Date.now() - t0) / 10) / 100;
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(result.ok ? 0 : 1);
}

main();
