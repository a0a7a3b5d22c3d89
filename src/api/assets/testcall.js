// turnpike demo call: two browsers in one room exchange video (camera, or a canvas test
// pattern) and a file over a data channel, signaling through /api/v1/signal/ROOM.
// For testing a deployment only. No dependencies, no build step.
// Fragment parameters: #room=ID&token=API_TOKEN&relay=0|1&pattern=1 (force the test pattern).
"use strict";

const CHUNK = 16 * 1024;
const HIGH_WATER = 1024 * 1024;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.replace(/^#/, ""));
const token = params.get("token") || "";
let room = params.get("room") || "";

function log(text) {
  const line = new Date().toISOString().slice(11, 23) + " " + text + "\n";
  $("log").textContent += line;
  $("log").scrollTop = $("log").scrollHeight;
}

function setStatus(text) {
  $("status").textContent = text;
}

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

// ---- SHA-256, incremental (crypto.subtle needs a secure context and is not incremental) ----
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

class Sha256 {
  constructor() {
    this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    this.buf = new Uint8Array(64);
    this.bufLen = 0;
    this.len = 0;
    this.w = new Uint32Array(64);
  }

  update(data) {
    let i = 0;
    this.len += data.length;
    if (this.bufLen) {
      const n = Math.min(64 - this.bufLen, data.length);
      this.buf.set(data.subarray(0, n), this.bufLen);
      this.bufLen += n;
      i = n;
      if (this.bufLen === 64) { this.block(this.buf, 0); this.bufLen = 0; }
    }
    for (; i + 64 <= data.length; i += 64) this.block(data, i);
    if (i < data.length) { this.buf.set(data.subarray(i), 0); this.bufLen = data.length - i; }
    return this;
  }

  block(p, o) {
    const w = this.w;
    const rotr = (x, n) => (x >>> n) | (x << (32 - n));
    for (let t = 0; t < 16; t++) {
      w[t] = (p[o + 4 * t] << 24) | (p[o + 4 * t + 1] << 16) | (p[o + 4 * t + 2] << 8) | p[o + 4 * t + 3];
    }
    for (let t = 16; t < 64; t++) {
      const a = w[t - 15], b = w[t - 2];
      const s0 = rotr(a, 7) ^ rotr(a, 18) ^ (a >>> 3);
      const s1 = rotr(b, 17) ^ rotr(b, 19) ^ (b >>> 10);
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
    }
    let [a, b, c, d, e, f, g, h] = this.h;
    for (let t = 0; t < 64; t++) {
      const t1 = (h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t]) | 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    const s = this.h;
    s[0] += a; s[1] += b; s[2] += c; s[3] += d; s[4] += e; s[5] += f; s[6] += g; s[7] += h;
  }

  hex() {
    const bits = this.len * 8;
    const pad = new Uint8Array(((this.bufLen < 56 ? 56 : 120) - this.bufLen) + 8);
    pad[0] = 0x80;
    const n = pad.length;
    const hi = Math.floor(bits / 0x100000000), lo = bits >>> 0;
    pad[n - 8] = hi >>> 24; pad[n - 7] = hi >>> 16; pad[n - 6] = hi >>> 8; pad[n - 5] = hi;
    pad[n - 4] = lo >>> 24; pad[n - 3] = lo >>> 16; pad[n - 2] = lo >>> 8; pad[n - 1] = lo;
    const len = this.len;
    this.update(pad);
    this.len = len;
    return Array.from(this.h, (x) => x.toString(16).padStart(8, "0")).join("");
  }
}

// ---- local media: the camera, or a moving canvas test pattern --------------------------
function testPattern() {
  const canvas = document.createElement("canvas");
  canvas.width = 640;
  canvas.height = 360;
  const ctx = canvas.getContext("2d");
  const bars = ["#c0c0c0", "#c0c000", "#00c0c0", "#00c000", "#c000c0", "#c00000", "#0000c0"];
  let frame = 0;
  const draw = () => {
    bars.forEach((color, i) => { ctx.fillStyle = color; ctx.fillRect(i * 640 / 7, 0, 640 / 7 + 1, 260); });
    ctx.fillStyle = "#111";
    ctx.fillRect(0, 260, 640, 100);
    ctx.fillStyle = "#fff";
    ctx.fillRect((frame * 8) % 640, 270, 40, 40);
    ctx.font = "22px monospace";
    ctx.fillText("turnpike test pattern  " + new Date().toISOString().slice(11, 22), 12, 345);
    frame++;
  };
  draw();
  setInterval(draw, 66);
  return canvas.captureStream(15);
}

async function localMedia() {
  if (params.get("pattern") !== "1" && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: false });
      return { stream, kind: "camera" };
    } catch (e) {
      log("camera unavailable (" + e.name + "), using the test pattern");
    }
  } else if (params.get("pattern") !== "1") {
    log("no camera API (an http:// page other than localhost is not a secure context), using the test pattern");
  }
  return { stream: testPattern(), kind: "test pattern" };
}

// ---- the call ------------------------------------------------------------------------------
const call = {
  ws: null, pc: null, dc: null, media: null, iceServers: null, policy: "all",
  pendingCandidates: [], statsTimer: null,
  sent: null, received: null, incoming: null,
};

function send(msg) {
  if (call.ws && call.ws.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify(msg));
}

async function fetchIce() {
  const response = await fetch("/api/v1/ice?username=testcall", { headers: authHeaders(), cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error("/api/v1/ice: HTTP " + response.status + ": " + (body.error || ""));
  return body.iceServers;
}

function teardown() {
  if (call.pc) call.pc.close();
  call.pc = null;
  call.dc = null;
  call.pendingCandidates = [];
  $("remote").srcObject = null;
  $("send").disabled = true;
}

function newPeerConnection() {
  teardown();
  const pc = new RTCPeerConnection({ iceServers: call.iceServers, iceTransportPolicy: call.policy });
  call.pc = pc;
  for (const track of call.media.stream.getTracks()) pc.addTrack(track, call.media.stream);
  pc.onicecandidate = (e) => {
    if (e.candidate && e.candidate.candidate) {
      send({ type: "candidate", candidate: e.candidate.toJSON() });
      log("local candidate: " + (e.candidate.type || "") + " " + e.candidate.candidate.split(" ").slice(2, 8).join(" "));
    }
  };
  pc.onicecandidateerror = (e) => log("icecandidateerror " + e.errorCode + " " + e.errorText + " (" + e.url + ")");
  pc.ontrack = (e) => { $("remote").srcObject = e.streams[0] || new MediaStream([e.track]); };
  pc.onconnectionstatechange = () => {
    $("ice-state").textContent = "ice " + pc.iceConnectionState + ", connection " + pc.connectionState;
    log("connection " + pc.connectionState);
    if (pc.connectionState === "connected") {
      document.body.dataset.connected = "true";
      setStatus("connected");
    } else if (pc.connectionState === "failed") {
      setStatus("ICE failed: no candidate pair works (with relay only: is TURN reachable from here?)");
    }
  };
  // Negotiated on both sides (same id): no in-band open handshake to wait for.
  const dc = pc.createDataChannel("file", { negotiated: true, id: 0, ordered: true });
  dc.binaryType = "arraybuffer";
  dc.bufferedAmountLowThreshold = HIGH_WATER / 4;
  dc.onopen = () => { $("send").disabled = false; log("data channel open"); };
  dc.onclose = () => { $("send").disabled = true; };
  dc.onmessage = (e) => onData(e.data);
  call.dc = dc;
  return pc;
}

async function flushCandidates() {
  for (const c of call.pendingCandidates.splice(0)) {
    await call.pc.addIceCandidate(c).catch((e) => log("addIceCandidate: " + e));
  }
}

async function onSignal(msg) {
  switch (msg.type) {
    case "joined":
      setStatus(msg.peers === 2 ? "joined; calling the other participant" : "joined; waiting for the other participant");
      if (msg.peers === 2) await makeOffer();
      break;
    case "peer-joined":
      setStatus("the other participant joined; waiting for its offer");
      break;
    case "peer-left":
      setStatus("the other participant left; waiting for someone to join");
      log("peer left");
      teardown();
      break;
    case "offer": {
      const pc = newPeerConnection();
      await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
      await flushCandidates();
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      send({ type: "answer", sdp: pc.localDescription.sdp });
      setStatus("answered; connecting");
      break;
    }
    case "answer":
      if (!call.pc) break;
      await call.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      await flushCandidates();
      setStatus("got the answer; connecting");
      break;
    case "candidate":
      if (call.pc && call.pc.remoteDescription) {
        await call.pc.addIceCandidate(msg.candidate).catch((e) => log("addIceCandidate: " + e));
      } else {
        call.pendingCandidates.push(msg.candidate);
      }
      break;
    default:
      break;
  }
}

async function makeOffer() {
  const pc = newPeerConnection();
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  send({ type: "offer", sdp: pc.localDescription.sdp });
}

async function join() {
  $("join").disabled = true;
  $("relay").disabled = true;
  call.policy = $("relay").checked ? "relay" : "all";
  try {
    setStatus("fetching /api/v1/ice ...");
    call.iceServers = await fetchIce();
    call.media = await localMedia();
    $("local").srcObject = call.media.stream;
    $("media").textContent = call.media.kind + ", iceTransportPolicy \"" + call.policy + "\"";
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let url = scheme + "//" + location.host + "/api/v1/signal/" + encodeURIComponent(room);
    if (token) url += "?token=" + encodeURIComponent(token);
    const ws = new WebSocket(url);
    call.ws = ws;
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      onSignal(msg).catch((err) => log("signaling: " + err));
    };
    ws.onclose = (e) => {
      log("signaling closed: " + e.code + " " + (e.reason || ""));
      if (e.code === 1006 && !document.body.dataset.joined) setStatus("could not join: unknown or expired room, room full, or token refused");
      else if (e.code === 4000) setStatus("the room expired (10 minutes); create a new one");
    };
    ws.onopen = () => { document.body.dataset.joined = "true"; log("signaling connected"); };
    call.statsTimer = setInterval(updateStats, 1000);
  } catch (e) {
    setStatus("error: " + e.message);
    $("join").disabled = false;
    $("relay").disabled = false;
  }
}

function describe(c) {
  if (!c) return "?";
  const relay = c.relayProtocol ? " via TURN/" + c.relayProtocol : "";
  return c.candidateType + " " + c.protocol + " " + (c.address || c.ip) + ":" + c.port + relay;
}

// A summary of the connection for the page (and for automated tests: window.testcall).
async function summary() {
  const out = {
    connectionState: call.pc ? call.pc.connectionState : "none",
    policy: call.policy,
    media: call.media ? call.media.kind : null,
    pair: null,
    inbound_video: null,
    outbound_video: null,
    sent: call.sent,
    received: call.received,
  };
  if (!call.pc) return out;
  const stats = await call.pc.getStats();
  let pairId = null;
  stats.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId; });
  stats.forEach((s) => {
    if (!pairId && s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pairId = s.id;
  });
  const pick = (c) => c && {
    type: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol || null,
    address: (c.address || c.ip) + ":" + c.port,
  };
  const p = pairId && stats.get(pairId);
  if (p) {
    const local = stats.get(p.localCandidateId), remote = stats.get(p.remoteCandidateId);
    out.pair = { local: pick(local), remote: pick(remote), text: describe(local) + " <-> " + describe(remote) };
  }
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out.inbound_video = { framesDecoded: s.framesDecoded || 0, packetsReceived: s.packetsReceived,
        frameWidth: s.frameWidth, frameHeight: s.frameHeight };
    }
    if (s.type === "outbound-rtp" && s.kind === "video") {
      out.outbound_video = { framesEncoded: s.framesEncoded || 0, packetsSent: s.packetsSent };
    }
  });
  return out;
}

async function updateStats() {
  if (!call.pc) return;
  const s = await summary();
  $("pair").textContent = s.pair ? s.pair.text : "-";
  $("pair").className = "mono" + (s.pair && s.pair.local.type === "relay" ? " ok" : "");
  const v = s.inbound_video;
  $("video-stats").textContent = v
    ? "framesDecoded " + v.framesDecoded + ", " + (v.frameWidth || "?") + "x" + (v.frameHeight || "?") +
      ", packets " + v.packetsReceived
    : "-";
  if (v && v.framesDecoded > 0) document.body.dataset.framesDecoded = String(v.framesDecoded);
}

// ---- file transfer over the data channel -----------------------------------------------
function waitLow(dc) {
  if (dc.bufferedAmount <= HIGH_WATER) return Promise.resolve();
  return new Promise((resolve) => {
    dc.addEventListener("bufferedamountlow", resolve, { once: true });
  });
}

async function sendFile() {
  const file = $("file").files[0];
  const dc = call.dc;
  if (!file || !dc || dc.readyState !== "open") return;
  $("send").disabled = true;
  const started = performance.now();
  const hash = new Sha256();
  call.sent = { name: file.name, bytes: file.size, sha256: null, ms: null, peer_sha256: null, peer_bytes: null, ok: null };
  $("send-hash").textContent = "";
  dc.send(JSON.stringify({ type: "file", name: file.name, size: file.size }));
  for (let off = 0; off < file.size; off += CHUNK) {
    const chunk = new Uint8Array(await file.slice(off, off + CHUNK).arrayBuffer());
    hash.update(chunk);
    await waitLow(dc);
    dc.send(chunk);
    $("send-progress").value = (off + chunk.length) / Math.max(1, file.size);
    $("send-info").textContent = (off + chunk.length) + " / " + file.size + " bytes";
  }
  if (file.size === 0) $("send-progress").value = 1;
  const digest = hash.hex();
  call.sent.sha256 = digest;
  call.sent.ms = Math.round(performance.now() - started);
  dc.send(JSON.stringify({ type: "end", sha256: digest }));
  $("send-hash").textContent = digest + " (waiting for the other side's hash)";
  $("send").disabled = false;
  log("sent " + file.name + " (" + file.size + " bytes) in " + call.sent.ms + " ms");
}

function onData(data) {
  if (typeof data === "string") {
    const msg = JSON.parse(data);
    if (msg.type === "file") {
      call.incoming = { name: msg.name, size: msg.size, got: 0, hash: new Sha256(), started: performance.now() };
      call.received = null;
      $("recv-hash").textContent = "";
      $("recv-info").textContent = "receiving " + msg.name;
    } else if (msg.type === "end" && call.incoming) {
      const inc = call.incoming;
      const digest = inc.hash.hex();
      const ok = digest === msg.sha256 && inc.got === inc.size;
      call.received = { name: inc.name, bytes: inc.got, size: inc.size, sha256: digest, sender_sha256: msg.sha256,
        ms: Math.round(performance.now() - inc.started), ok };
      call.incoming = null;
      $("recv-hash").textContent = digest + (ok ? " = sender's: intact" : " != sender's " + msg.sha256);
      $("recv-hash").className = "mono " + (ok ? "ok" : "fail");
      document.body.dataset.received = ok ? "ok" : "corrupt";
      call.dc.send(JSON.stringify({ type: "ack", sha256: digest, bytes: inc.got }));
      log("received " + inc.name + " (" + inc.got + " bytes), SHA-256 " + (ok ? "matches" : "MISMATCH"));
    } else if (msg.type === "ack" && call.sent) {
      const ok = msg.sha256 === call.sent.sha256 && msg.bytes === call.sent.bytes;
      Object.assign(call.sent, { peer_sha256: msg.sha256, peer_bytes: msg.bytes, ok });
      $("send-hash").textContent = call.sent.sha256 + (ok ? " = receiver's: intact" : " != receiver's " + msg.sha256);
      $("send-hash").className = "mono " + (ok ? "ok" : "fail");
      document.body.dataset.sent = ok ? "ok" : "corrupt";
    }
    return;
  }
  const inc = call.incoming;
  if (!inc) return;
  const bytes = new Uint8Array(data);
  inc.hash.update(bytes);
  inc.got += bytes.length;
  $("recv-progress").value = inc.got / Math.max(1, inc.size);
  $("recv-info").textContent = inc.got + " / " + inc.size + " bytes of " + inc.name;
}

// ---- setup ---------------------------------------------------------------------------------
function showRoom() {
  const hash = new URLSearchParams({ room });
  if (token) hash.set("token", token);
  const link = location.origin + "/test/call#" + hash.toString();
  $("link").textContent = link;
  $("link").href = link;
  $("no-room").hidden = true;
  $("room-line").hidden = false;
  $("join").disabled = false;
}

async function createRoom() {
  $("create").disabled = true;
  try {
    const response = await fetch("/api/v1/rooms", { method: "POST", headers: authHeaders(), cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error("/api/v1/rooms: HTTP " + response.status + ": " + (body.error || ""));
    room = body.room;
    params.set("room", room);
    history.replaceState(null, "", "#" + params.toString());
    showRoom();
    setStatus("room created; it expires in " + Math.round(body.expires_in / 60) + " minutes");
  } catch (e) {
    setStatus("error: " + e.message);
    $("create").disabled = false;
  }
}

$("create").addEventListener("click", createRoom);
$("join").addEventListener("click", join);
$("send").addEventListener("click", () => sendFile().catch((e) => log("send: " + e)));
if (params.get("relay") === "0") $("relay").checked = false;
if (room) showRoom();
window.testcall = { summary, Sha256 };
