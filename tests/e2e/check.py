#!/usr/bin/env python3
"""check.py - verdict for one e2e case from its peers' JSON result lines (stdin).

  check.py KIND NAME RC [key=value ...]
    KIND  stun-fails | stun-srflx | relay | browser | testpage | call
    NAME  the case name printed on the PASS/FAIL line
    RC    the exit status of the command that produced the lines
    relay: proto=udp|tcp (the client<->turnpike transport aiortc reports; TLS is "tcp"),
           tls=1 (print it as tls), bytes=N (the payload size, default 1 MiB)
    browser: relay_proto=udp|tcp|tls (Chromium's relayProtocol of the selected local candidate)
    stun-srflx: wan=IP,IP (the NATs' public addresses the srflx candidates must carry)

Prints "PASS|FAIL NAME: <selected candidate pair> | <transfer time>" plus detail lines;
exit 0 on PASS. Only the standard library: runs with the system python3.
"""
import json
import sys


def load(text):
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


TLS = False  # set from the tls=1 option: aiortc reports a TLS connection as "tcp"


def side(r):
    if not r.get("local_type"):
        return "no pair selected"
    proto = r.get("local_relay_protocol")
    if proto == "tcp" and TLS:
        proto = "tls"
    via = f" (relay over {proto})" if proto else ""
    return f"{r['local_type']} {r['local_addr']}{via} <-> {r['remote_type']} {r['remote_addr']}"


def srflx_of(r):
    """The srflx addresses ("IP:PORT") a peer gathered, i.e. what turnpike's Binding reported."""
    return [c.split()[1].rsplit("/", 1)[0] for c in r.get("gathered", []) if c.startswith("srflx ")]


def transfer(r):
    if r.get("connect_s") is None:
        return "no transfer"
    mib = r.get("bytes", 0) / 1048576
    return (f"{mib:g} MiB sent+echoed in {r['elapsed_s'] - r['connect_s']:.2f}s "
            f"(ICE+DTLS+SCTP connect {r['connect_s']:.2f}s)")


def main():
    kind, name, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
    opts = dict(a.split("=", 1) for a in sys.argv[4:])
    global TLS
    TLS = opts.get("tls") == "1"
    lines = load(sys.stdin.read())
    problems, details = [], []
    pair, timing = "none", "none"

    if kind in ("stun-fails", "stun-srflx", "relay"):
        o, a = (lines + [{}, {}])[:2]
        for r, who in ((o, "offer"), (a, "answer")):
            details.append(f"{who}: ok={r.get('ok')} gathered={r.get('gathered')} error={r.get('error')}")
        pair = f"offer {side(o)}; answer {side(a)}"
        timing = transfer(o)
        if kind == "stun-fails":
            if rc == 0 or o.get("ok") or a.get("ok"):
                problems.append("ICE connected, but symmetric NATs with STUN only must fail")
            for r, who in ((o, "offer"), (a, "answer")):
                if not srflx_of(r):
                    problems.append(f"{who} gathered no srflx candidate (so the failure proves nothing)")
            pair = "none (ICE failed, as it must)"
            timing = f"gave up after {o.get('elapsed_s')}s: {o.get('error')}"
        elif kind == "stun-srflx":
            wan = opts.get("wan", "").split(",")
            if rc != 0:
                problems.append("pair failed")
            for r, other, who in ((o, a, "offer"), (a, o, "answer")):
                if r.get("remote_type") != "srflx":
                    problems.append(f"{who}: remote candidate is {r.get('remote_type')}, not srflx")
                # the remote address it talks to is the srflx address turnpike told the other peer
                if r.get("remote_addr") and r["remote_addr"].rsplit("/", 1)[0] not in srflx_of(other):
                    problems.append(f"{who}: remote {r.get('remote_addr')} is not among the other "
                                    f"peer's srflx candidates {srflx_of(other)}")
                for addr in srflx_of(r):
                    if addr.rsplit(":", 1)[0] not in wan:
                        problems.append(f"{who}: srflx {addr} is not a NAT's public address {wan}")
        else:  # relay
            if rc != 0:
                problems.append("pair failed")
            for r, who in ((o, "offer"), (a, "answer")):
                if (r.get("local_type"), r.get("remote_type")) != ("relay", "relay"):
                    problems.append(f"{who}: pair {r.get('local_type')}/{r.get('remote_type')}, not relay/relay")
                if opts.get("proto") and r.get("local_relay_protocol") != opts["proto"]:
                    problems.append(f"{who}: reaches turnpike over {r.get('local_relay_protocol')}, "
                                    f"not {opts['proto']}")
            if not (o.get("sha256") and o.get("sha256") == a.get("sha256") and o.get("bytes") == int(opts.get("bytes", 1048576))):
                problems.append(f"SHA-256 check: offer {o.get('bytes')} bytes {o.get('sha256')}, "
                                f"answer {a.get('sha256')}")
    elif kind == "browser":
        b = lines[0] if lines else {}
        peer = b.get("peer") or {}
        pair = b.get("selected_pair", "none")
        t = b.get("transfer") or {}
        if t:
            timing = (f"{t['bytes'] / 1048576:g} MiB file in 16 KiB chunks: {t['transfer_ms']} ms "
                      f"(connect {t['connect_ms']} ms); SHA-256 {t['sha256'][:16]}... == peer's "
                      f"{(t.get('peer_sha256') or '')[:16]}...")
        details.append(f"browser: {b.get('browser')} ice_urls={b.get('ice_urls')} gathered={b.get('gathered')}")
        if b.get("candidate_errors"):
            details.append(f"browser icecandidateerror: {b['candidate_errors']}")
        if "expired" in b:
            e = b["expired"]
            details.append(f"expired credential {e.get('username')} (ttl {e.get('ttl')}s, waited "
                           f"{e.get('waited_ms')} ms): gathered {e.get('gathered')}, errors "
                           f"{[(x['url'], x['errorCode'], x['errorText']) for x in e.get('candidate_errors', [])]}")
        if b.get("inbound_video") is not None:
            v = b["inbound_video"]
            details.append(f"browser inbound-rtp video (from aiortc): framesDecoded={v.get('framesDecoded')} "
                           f"packetsReceived={v.get('packetsReceived')} {v.get('codec')} "
                           f"{v.get('frameWidth')}x{v.get('frameHeight')}")
        if b.get("outbound_video") is not None:
            v = b["outbound_video"]
            details.append(f"browser outbound-rtp video (fake camera): framesEncoded={v.get('framesEncoded')} "
                           f"packetsSent={v.get('packetsSent')} {v.get('codec')}")
        if peer:
            details.append(f"aiortc peer: ok={peer.get('ok')} turn={peer.get('turn')} pair: {side(peer)}; "
                           f"file {peer.get('bytes')} bytes in {peer.get('transfer_s')}s; camera frames "
                           f"decoded={peer.get('video_frames_decoded')} ({peer.get('video_frame_size')}), "
                           f"inbound-rtp {peer.get('inbound_rtp_video')}; error={peer.get('error')}")
        if rc != 0 or not b.get("ok"):
            problems.append(f"browser: {b.get('error') or 'no result line'}")
        if opts.get("relay_proto") and (b.get("pair") or {}).get("local", {}).get("relayProtocol") != opts["relay_proto"]:
            problems.append(f"browser reaches turnpike over "
                            f"{(b.get('pair') or {}).get('local', {}).get('relayProtocol')}, not {opts['relay_proto']}")
    elif kind == "testpage":  # testpage_peer.mjs --case testpage (turnpike's /test page)
        b = lines[0] if lines else {}
        relay = [c for c in b.get("candidates", []) if c.get("type") == "relay"]
        pair = "none (gathering only)"
        timing = ", ".join(f"{v['url']}: first relay candidate after {v.get('first_relay_ms')} ms"
                           for v in b.get("verdicts", []) if v.get("first_relay_ms") is not None) or "none"
        details.append(f"browser: {b.get('browser')}, page status: {b.get('status')!r}")
        for v in b.get("verdicts", []):
            details.append(f"verdict {v['url']}: {v['verdict']}")
        details += [f"relay candidate {c['address']} ({c['protocol']}) from {c['url']}" for c in relay]
        if rc != 0 or not b.get("ok"):
            problems.append(f"browser: {b.get('error') or 'no result line'}")
    elif kind == "call":  # two testpage_peer.mjs --case call lines: sender and receiver
        by_role = {r.get("role"): r for r in lines}
        s, r = by_role.get("sender", {}), by_role.get("receiver", {})
        pair = f"sender {s.get('selected_pair', 'none')}; receiver {r.get('selected_pair', 'none')}"
        sent, recv = s.get("sent") or {}, r.get("received") or {}
        timing = (f"connected {s.get('connected_ms')}/{r.get('connected_ms')} ms, first frame decoded "
                  f"{s.get('frames_ms')}/{r.get('frames_ms')} ms after page load (sender/receiver); "
                  f"{(sent.get('bytes') or 0) / 1048576:g} MiB file sent in {sent.get('ms')} ms, "
                  f"received in {recv.get('ms')} ms, SHA-256 {str(recv.get('sha256'))[:16]}... "
                  f"{'==' if recv.get('ok') and sent.get('ok') else '!='} sender's")
        for who, x in (("sender", s), ("receiver", r)):
            v = x.get("inbound_video") or {}
            details.append(f"{who}: {x.get('browser')} media={x.get('media')} policy={x.get('policy')} "
                           f"inbound-rtp video framesDecoded={v.get('framesDecoded')} "
                           f"{v.get('frameWidth')}x{v.get('frameHeight')} error={x.get('error')}")
            if x.get("policy") != "relay":
                problems.append(f"{who}: iceTransportPolicy {x.get('policy')}, not relay")
        if rc != 0 or not (s.get("ok") and r.get("ok")):
            problems.append(f"sender: {s.get('error') or ('no result line' if not s else 'ok')}; "
                            f"receiver: {r.get('error') or ('no result line' if not r else 'ok')}")
    else:
        print(f"check.py: unknown kind {kind}", file=sys.stderr)
        return 2

    verdict = "FAIL" if problems else "PASS"
    print(f"{verdict} {name}: pair: {pair} | time: {timing}")
    for d in details:
        print(f"    {d}")
    for p in problems:
        print(f"    problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
