// The browser side of the turnpike end-to-end tests, driven by browser_peer.mjs through
// window.e2e. Plain WebRTC as an application would use it: iceServers from turnpike's
// /api/v1/ice, relay-only ICE, a file sent over a data channel in 16 KiB chunks with
// bufferedAmount back-pressure, the camera's video track, getStats() for the results.
'use strict';

const CHUNK = 16 * 1024;
const HIGH_WATER = 1024 * 1024;

function log(...parts) {
  document.getElementById('log').textContent += parts.join(' ') + '\n';
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// GET <api>/api/v1/ice?username=U[&ttl=N] with an optional bearer token (cross-origin: the
// page's origin must be in turnpike's --api-cors-origin list).
async function fetchIce(api, token, username, ttl) {
  const url = new URL('/api/v1/ice', api);
  url.searchParams.set('username', username);
  if (ttl) url.searchParams.set('ttl', String(ttl));
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(url, { headers, cache: 'no-store' });
  const body = await res.json();
  if (!res.ok) throw new Error(`GET ${url} -> ${res.status} ${JSON.stringify(body)}`);
  log('iceServers', JSON.stringify(body.iceServers.map((s) => s.urls)));
  return body;
}

// Keeps only the TURN URLs containing `pattern` (e.g. "turns:"), and drops STUN entries.
function onlyTurn(iceServers, pattern) {
  return iceServers
    .filter((s) => s.username !== undefined)
    .map((s) => ({ ...s, urls: [].concat(s.urls).filter((u) => u.includes(pattern)) }))
    .filter((s) => s.urls.length > 0);
}

function newPc(iceServers, state) {
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
  state.candidates = [];
  state.errors = [];
  pc.addEventListener('icecandidate', (e) => {
    if (e.candidate && e.candidate.candidate) state.candidates.push(e.candidate.candidate);
  });
  pc.addEventListener('icecandidateerror', (e) => {
    state.errors.push({ url: e.url, errorCode: e.errorCode, errorText: e.errorText });
  });
  return pc;
}

function gatheringComplete(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return withTimeout(new Promise((resolve) => {
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
  }), ms, 'ICE gathering');
}

// Candidate lines as "typ address:port/protocol".
function describeCandidates(lines) {
  return lines.map((line) => {
    const f = line.replace(/^candidate:/, '').split(' ');
    return `${f[7]} ${f[4]}:${f[5]}/${f[2].toLowerCase()}`;
  });
}

const state = { pc: null, dc: null, candidates: [], errors: [], tConnected: null, t0: null };

// Gathers candidates with relay-only ICE and closes again: what allocation gives.
async function gatherOnly(iceServers, ms) {
  const probe = {};
  const pc = newPc(iceServers, probe);
  pc.createDataChannel('probe');
  await pc.setLocalDescription();
  let timedOut = false;
  try {
    await gatheringComplete(pc, ms);
  } catch (e) {
    timedOut = true;
  }
  pc.close();
  return { candidates: describeCandidates(probe.candidates), errors: probe.errors, timedOut };
}

// Creates the offer (optionally with the camera's video track) and waits for gathering.
async function makeOffer(iceServers, { video }) {
  state.t0 = performance.now();
  const pc = newPc(iceServers, state);
  state.pc = pc;
  pc.addEventListener('connectionstatechange', () => {
    log('connection', pc.connectionState);
    if (pc.connectionState === 'connected' && state.tConnected === null) {
      state.tConnected = performance.now();
    }
  });
  if (video) {
    const stream = await navigator.mediaDevices.getUserMedia({
      video: { width: 320, height: 240, frameRate: 15 }, audio: false,
    });
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    pc.addEventListener('track', (e) => {
      document.getElementById('remote').srcObject = e.streams[0] || new MediaStream([e.track]);
    });
  }
  const dc = pc.createDataChannel('file', { ordered: true });
  dc.binaryType = 'arraybuffer';
  dc.bufferedAmountLowThreshold = HIGH_WATER / 2;
  state.dc = dc;
  state.messages = [];
  state.waiters = [];
  dc.addEventListener('message', (e) => {
    const msg = JSON.parse(e.data);
    const waiter = state.waiters.findIndex((w) => w.type === msg.type);
    if (waiter >= 0) state.waiters.splice(waiter, 1)[0].resolve(msg);
    else state.messages.push(msg);
  });
  await pc.setLocalDescription();
  await gatheringComplete(pc, 15000);
  return { sdp: pc.localDescription.sdp, candidates: describeCandidates(state.candidates), errors: state.errors };
}

async function acceptAnswer(sdp) {
  await state.pc.setRemoteDescription({ type: 'answer', sdp });
}

function nextMessage(type, ms) {
  const i = state.messages.findIndex((m) => m.type === type);
  if (i >= 0) return Promise.resolve(state.messages.splice(i, 1)[0]);
  return withTimeout(new Promise((resolve) => state.waiters.push({ type, resolve })), ms,
    `data channel message "${type}"`);
}

function channelOpen(dc, pc, ms) {
  if (dc.readyState === 'open') return Promise.resolve();
  return withTimeout(new Promise((resolve, reject) => {
    dc.addEventListener('open', resolve);
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'failed') reject(new Error('connection failed (ICE/DTLS)'));
    });
  }), ms, `data channel open (ice ${pc.iceConnectionState}, connection ${pc.connectionState})`);
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');
}

// Sends the file chosen in <input id=file> in 16 KiB slices, then {"type":"end"}; the peer
// answers {"type":"received","bytes":N,"sha256":"..."}.
async function sendFile(ms) {
  const { pc, dc } = state;
  await channelOpen(dc, pc, ms);
  const connectMs = performance.now() - state.t0;
  const file = document.getElementById('file').files[0];
  if (!file) throw new Error('no file chosen');
  const localSha = hex(await crypto.subtle.digest('SHA-256', await file.arrayBuffer()));
  const t0 = performance.now();
  for (let offset = 0; offset < file.size; offset += CHUNK) {
    while (dc.bufferedAmount > HIGH_WATER) {
      await withTimeout(new Promise((resolve) => dc.addEventListener('bufferedamountlow', resolve, { once: true })),
        ms, 'bufferedamountlow');
    }
    dc.send(await file.slice(offset, offset + CHUNK).arrayBuffer());
  }
  dc.send(JSON.stringify({ type: 'end', bytes: file.size, name: file.name }));
  const ack = await nextMessage('received', ms);
  const transferMs = performance.now() - t0;
  return { name: file.name, bytes: file.size, sha256: localSha, peer_bytes: ack.bytes,
    peer_sha256: ack.sha256, transfer_ms: Math.round(transferMs), connect_ms: Math.round(connectMs) };
}

// Polls getStats() until an inbound-rtp video stream has decoded `min` frames.
async function waitFramesDecoded(min, ms) {
  const deadline = performance.now() + ms;
  let inbound = null;
  while (performance.now() < deadline) {
    inbound = (await stats()).inbound_video;
    if (inbound && inbound.framesDecoded >= min) return inbound;
    await new Promise((r) => setTimeout(r, 250));
  }
  return inbound;
}

function candidateInfo(c) {
  if (!c) return null;
  return { type: c.candidateType, address: `${c.address}:${c.port}/${c.protocol}`,
    relayProtocol: c.relayProtocol || null, url: c.url || null };
}

// The selected candidate pair and the RTP/data channel counters.
async function stats() {
  const report = await state.pc.getStats();
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  let pair = null;
  report.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
  });
  if (!pair) report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
  const out = { pair: null, inbound_video: null, outbound_video: null, data: null };
  if (pair) {
    out.pair = { local: candidateInfo(byId.get(pair.localCandidateId)),
      remote: candidateInfo(byId.get(pair.remoteCandidateId)),
      rtt_ms: pair.currentRoundTripTime !== undefined ? Math.round(pair.currentRoundTripTime * 1000) : null,
      bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
      packetsSent: pair.packetsSent, packetsReceived: pair.packetsReceived };
  }
  report.forEach((s) => {
    const codec = s.codecId && byId.get(s.codecId) ? byId.get(s.codecId).mimeType : null;
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.inbound_video = { framesDecoded: s.framesDecoded, packetsReceived: s.packetsReceived,
        bytesReceived: s.bytesReceived, frameWidth: s.frameWidth, frameHeight: s.frameHeight, codec };
    }
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.outbound_video = { framesEncoded: s.framesEncoded, packetsSent: s.packetsSent,
        bytesSent: s.bytesSent, codec };
    }
    if (s.type === 'data-channel') out.data = { bytesSent: s.bytesSent, bytesReceived: s.bytesReceived };
  });
  return out;
}

async function bye() {
  const { dc } = state;
  if (dc && dc.readyState === 'open') {
    dc.send(JSON.stringify({ type: 'bye' }));
    for (let i = 0; i < 40 && dc.bufferedAmount > 0; i++) await new Promise((r) => setTimeout(r, 50));
  }
}

function close() {
  if (state.pc) state.pc.close();
}

window.e2e = { fetchIce, onlyTurn, gatherOnly, makeOffer, acceptAnswer, sendFile,
  waitFramesDecoded, stats, bye, close };
