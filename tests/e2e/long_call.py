#!/usr/bin/env python3
"""long_call.py - an aiortc call that lasts until told to end, for the drain test (drain.sh).

One process per side, each in its own lab namespace, signaling through files in --dir:

  ip netns exec tpd-c2 $PY long_call.py --dir D --role answer --turn URL --secret S &
  ip netns exec tpd-c1 $PY long_call.py --dir D --role offer --turn URL --secret S

Relay only. The offerer sends a numbered message every --interval seconds over a data
channel and counts the answerer's echoes; once connected it creates D/connected. Echoes
that arrive after D/mark exists are counted apart (the test creates it when the server
starts draining). When D/stop exists the offerer says bye, both close their peer
connections (aioice deletes its TURN allocation with a Refresh of lifetime 0) and print one
JSON line: ok, role, sent, echoed, echoed_after_mark, longest gap between echoes, the
selected pair. Exit status 0 only if the call stayed up and every message came back.
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time

# The signalling files are exchanged the way aiortc_peer.py exchanges them.
from aiortc_peer import read_json, write_json


def rest_credentials(secret, user, ttl=3600):
    username = f"{int(time.time()) + ttl}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def selected_pair(pc):
    try:
        pair = pc.sctp.transport.transport.iceGatherer._connection._nominated.get(1)
        return f"{pair.local_candidate.type} {pair.local_candidate.host}:{pair.local_candidate.port} <-> " \
               f"{pair.remote_candidate.type} {pair.remote_candidate.host}:{pair.remote_candidate.port}"
    except AttributeError:
        return None


async def run(args, result):
    from aiortc import (RTCConfiguration, RTCIceServer, RTCIceTransportPolicy,
                        RTCPeerConnection, RTCSessionDescription)

    user, cred = rest_credentials(args.secret, f"long-call-{args.role}")
    config = RTCConfiguration(iceServers=[RTCIceServer(urls=args.turn, username=user, credential=cred)],
                              iceTransportPolicy=RTCIceTransportPolicy.RELAY)
    pc = RTCPeerConnection(configuration=config)
    path = lambda name: os.path.join(args.dir, name)
    done = asyncio.get_running_loop().create_future()
    ending = [False]  # after "bye" the other side may close first

    def finish(error=None):
        if not done.done():
            result.setdefault("state_at_end", pc.connectionState)
            done.set_result(error)

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "failed" or (pc.connectionState == "closed" and not ending[0]):
            finish(f"connection {pc.connectionState}")

    if args.role == "offer":
        channel = pc.createDataChannel("ping")
        counts = {"sent": 0, "echoed": 0, "echoed_after_mark": 0}
        last_echo = [None]
        result["longest_gap_s"] = 0.0

        async def pinger():
            while not os.path.exists(path("stop")):
                channel.send(f"n:{counts['sent']}")
                counts["sent"] += 1
                await asyncio.sleep(args.interval)
            # Give the last echoes time to come back, then hang up.
            for _ in range(100):
                if counts["echoed"] == counts["sent"]:
                    break
                await asyncio.sleep(0.05)
            result["state_at_end"] = pc.connectionState
            ending[0] = True
            channel.send("bye")
            await asyncio.sleep(0.3)
            finish()

        @channel.on("open")
        def on_open():
            with open(path("connected"), "w"):
                pass
            asyncio.ensure_future(pinger())

        @channel.on("message")
        def on_message(msg):
            if not msg.startswith("n:"):
                return
            now = time.monotonic()
            if last_echo[0] is not None:
                result["longest_gap_s"] = max(result["longest_gap_s"], round(now - last_echo[0], 3))
            last_echo[0] = now
            counts["echoed"] += 1
            if os.path.exists(path("mark")):
                counts["echoed_after_mark"] += 1

        await pc.setLocalDescription(await pc.createOffer())
        write_json(path("offer.json"), {"sdp": pc.localDescription.sdp})
        answer = await read_json(path("answer.json"))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    else:
        counts = {"echoed": 0}

        @pc.on("datachannel")
        def on_channel(channel):
            @channel.on("message")
            def on_message(msg):
                if msg == "bye":
                    ending[0] = True
                    finish()
                else:
                    channel.send(msg)
                    counts["echoed"] += 1

        offer = await read_json(path("offer.json"))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        write_json(path("answer.json"), {"sdp": pc.localDescription.sdp})

    error = await asyncio.wait_for(done, args.timeout)
    result["pair"] = selected_pair(pc)
    result.update(counts)
    state = result.get("state_at_end")
    await pc.close()
    if error:
        return error
    if state != "connected":
        return f"call not connected at the end ({state})"
    if args.role == "offer" and counts["echoed"] != counts["sent"]:
        return f"sent {counts['sent']} messages, {counts['echoed']} came back"
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True)
    p.add_argument("--role", required=True, choices=["offer", "answer"])
    p.add_argument("--turn", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args()
    result = {"ok": False, "role": args.role, "error": None}
    try:
        result["error"] = asyncio.run(run(args, result))
    except asyncio.TimeoutError:
        result["error"] = f"no end within {args.timeout} s"
    except Exception as e:  # reported in the JSON line
        result["error"] = f"{type(e).__name__}: {e}"
    result["ok"] = result["error"] is None
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
