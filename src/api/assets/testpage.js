// turnpike ICE test page: fetches /api/v1/ice, gathers candidates per server URL with
// RTCPeerConnection and lists them live, like the trickle-ICE sample. No dependencies.
// A bearer token for the API can be given in the fragment: /test#token=SECRET.
"use strict";

const GATHER_TIMEOUT_MS = 10000;

function token() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  return params.get("token");
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

// The candidate type a URL is expected to produce.
function expects(url) {
  return /^turns?:/i.test(url) ? "relay" : "srflx";
}

// Parses "candidate:..." for browsers whose RTCIceCandidate lacks the fields.
function parseCandidate(c) {
  const f = c.candidate.replace(/^candidate:/, "").split(" ");
  const out = { protocol: f[2], priority: f[3], address: f[4], port: f[5], type: f[7] };
  for (let i = 8; i + 1 < f.length; i += 2) {
    if (f[i] === "raddr") out.relatedAddress = f[i + 1];
    if (f[i] === "rport") out.relatedPort = f[i + 1];
  }
  return out;
}

async function gather(server, url, started, verdictCell) {
  const want = expects(url);
  const config = { iceServers: [{ urls: url }], iceTransportPolicy: "all", iceCandidatePoolSize: 0 };
  if (server.username) {
    config.iceServers[0].username = server.username;
    config.iceServers[0].credential = server.credential;
  }
  const pc = new RTCPeerConnection(config);
  const errors = [];
  let found = false;
  const tbody = document.querySelector("#candidates tbody");
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      pc.close();
      if (found) {
        verdictCell.textContent = "OK: got a " + want + " candidate";
        verdictCell.className = "ok";
      } else {
        let why = "no " + want + " candidate";
        if (errors.length) why += " (" + errors.join("; ") + ")";
        else if (want === "srflx") why += " (server unreachable over UDP, or no NAT: browsers drop a srflx equal to a host candidate)";
        verdictCell.textContent = "FAIL: " + why;
        verdictCell.className = "fail";
      }
      resolve(found);
    };
    const timer = setTimeout(finish, GATHER_TIMEOUT_MS);
    pc.onicecandidate = (event) => {
      if (!event.candidate) { finish(); return; }
      if (!event.candidate.candidate) return;
      const c = event.candidate;
      const p = parseCandidate(c);
      const type = c.type || p.type;
      const row = document.createElement("tr");
      cell(row, Math.round(performance.now() - started));
      cell(row, c.url || url);
      cell(row, type, type === want ? "ok" : "");
      cell(row, c.protocol || p.protocol);
      cell(row, c.address || p.address);
      cell(row, c.port || p.port);
      const raddr = c.relatedAddress || p.relatedAddress;
      const rport = c.relatedPort || p.relatedPort;
      cell(row, raddr ? raddr + ":" + rport : "");
      cell(row, c.priority || p.priority);
      tbody.appendChild(row);
      if (type === want) found = true;
    };
    pc.onicecandidateerror = (e) => {
      errors.push((e.errorCode || "") + " " + (e.errorText || "") + (e.url ? " from " + e.url : ""));
    };
    pc.createDataChannel("turnpike-test");
    pc.createOffer()
      .then((offer) => pc.setLocalDescription(offer))
      .catch((e) => { errors.push(String(e)); finish(); });
  });
}

async function run() {
  const button = document.getElementById("start");
  button.disabled = true;
  document.querySelector("#candidates tbody").textContent = "";
  const verdicts = document.querySelector("#verdicts tbody");
  verdicts.textContent = "";
  setStatus("fetching /api/v1/ice ...");
  try {
    const headers = {};
    if (token()) headers.Authorization = "Bearer " + token();
    const response = await fetch("/api/v1/ice?username=testpage", { headers, cache: "no-store" });
    const body = await response.json();
    if (!response.ok) throw new Error("/api/v1/ice: HTTP " + response.status + ": " + (body.error || ""));
    const jobs = [];
    const started = performance.now();
    for (const server of body.iceServers) {
      const urls = Array.isArray(server.urls) ? server.urls : [server.urls];
      for (const url of urls) {
        const row = document.createElement("tr");
        cell(row, url);
        cell(row, expects(url));
        const verdict = cell(row, "gathering...", "wait");
        verdict.dataset.url = url;
        verdicts.appendChild(row);
        jobs.push(gather(server, url, started, verdict));
      }
    }
    setStatus("gathering from " + jobs.length + " URLs ...");
    const results = await Promise.all(jobs);
    const ok = results.filter(Boolean).length;
    setStatus(ok + " of " + results.length + " URLs OK");
    document.body.dataset.done = "true";
    document.body.dataset.ok = String(ok === results.length);
  } catch (e) {
    setStatus("error: " + e.message);
    document.body.dataset.done = "true";
    document.body.dataset.ok = "false";
  } finally {
    button.disabled = false;
  }
}

document.getElementById("start").addEventListener("click", run);
run();
