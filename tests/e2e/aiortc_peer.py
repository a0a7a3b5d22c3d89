#!/usr/bin/env python3
"""aiortc_peer.py - the aiortc answerer facing the browser in the turnpike e2e tests.

Run with the harness venv python (aiortc 1.16.0), usually inside a lab namespace:

  ip netns exec te-c2 $PY aiortc_peer.py --signal-dir D --api http://203.0.113.1:8080 \
      --token T [--prefer transport=udp] [--video-frames 10] [--timeout 60]

* ICE servers: fetched from turnpike's GET /api/v1/ice (bearer token), relay-only; aiortc
  uses one TURN URL, the first containing --prefer. Or, instead of --api, one given TURN
  server: --turn URL --username U --credential C (a lab whose API the peer cannot reach).
* Signaling through files, as ../shared/harness/webrtc_peer.py does: reads D/offer.json
  {"id","type","sdp"}, writes D/answer.json with the same id.
* Data channel: binary messages are the file's chunks (hashed as they arrive);
  {"type":"end"} is answered with {"type":"received","bytes":N,"sha256":"..."};
  {"type":"bye"} ends the session.
* Video: each received video track is read with MediaStreamTrack.recv(), i.e. decoded by
  aiortc, and the decoded frames are counted; a small synthetic video track is sent back so
  the browser's inbound-rtp stats can be checked too.
* Success: the file was received (an "end" came) and, with --video-frames N > 0, at least N
  frames were decoded. The result is one JSON line on stdout and also D/peer_result.json.
"""
import argparse
import asyncio
import fractions
import hashlib
import json
import logging
import os
import signal
import sys
import time
import urllib.parse
import urllib.request


def write_json(path, obj):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


async def read_json(path):
    while True:
        try:
            with open(path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            await asyncio.sleep(0.05)


def fetch_ice(api, token, user):
    url = f"{api.rstrip('/')}/api/v1/ice?" + urllib.parse.urlencode({"username": user})
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.load(res)


def pair_info(pc):
    """Selected (nominated) candidate pair, from aiortc/aioice internals (as webrtc_peer.py)."""
    info = dict(local_type=None, local_addr=None, remote_type=None, remote_addr=None)
    try:
        pair = pc.sctp.transport.transport.iceGatherer._connection._nominated.get(1)
        local, remote = pair.local_candidate, pair.remote_candidate
    except AttributeError:
        return info
    info.update(local_type=local.type, local_addr=f"{local.host}:{local.port}/{local.transport.lower()}",
                remote_type=remote.type, remote_addr=f"{remote.host}:{remote.port}/{remote.transport.lower()}")
    inner = getattr(getattr(pair.protocol, "transport", None), "_TurnTransport__inner_protocol", None)
    if inner is not None:
        info["local_relay_protocol"] = "tcp" if "Tcp" in type(inner).__name__ else "udp"
    return info


async def run(args, result):
    from aiortc import (RTCConfiguration, RTCIceServer, RTCIceTransportPolicy,
                        RTCPeerConnection, RTCSessionDescription, VideoStreamTrack)
    from aiortc.mediastreams import MediaStreamError
    from av import VideoFrame

    class SmallVideo(VideoStreamTrack):
        """320x240 frames whose brightness changes, so every frame has content to encode."""

        async def recv(self):
            pts, time_base = await self.next_timestamp()
            frame = VideoFrame(width=320, height=240)
            shade = bytes([pts // 3000 % 256])
            for plane in frame.planes:
                plane.update(shade * plane.buffer_size)
            frame.pts, frame.time_base = pts, time_base
            return frame

    if args.turn:
        ice = {"iceServers": [{"urls": args.turn, "username": args.username, "credential": args.credential}]}
    else:
        ice = fetch_ice(args.api, args.token, args.user)
    servers = []
    for s in ice["iceServers"]:
        if "username" not in s:
            continue  # STUN is useless with relay-only ICE
        urls = [u for u in ([s["urls"]] if isinstance(s["urls"], str) else s["urls"]) if args.prefer in u]
        if urls:
            servers.append(RTCIceServer(urls=urls[0], username=s["username"], credential=s["credential"]))
            result["turn"] = urls[0]
            break
    if not servers:
        raise RuntimeError(f"no TURN URL containing {args.prefer!r} in {ice}")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=servers,
                                            iceTransportPolicy=RTCIceTransportPolicy.RELAY))
    result["_pc"] = pc
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    file_done = asyncio.Event()
    frames = {"n": 0, "size": None}
    enough_frames = asyncio.Event()
    if args.video_frames <= 0:
        enough_frames.set()

    def finish(ok, error=None):
        if not done.done():
            done.set_result((ok, error))

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "connected" and "t_connected" not in result:
            result["t_connected"] = time.monotonic()
        if pc.connectionState == "failed":
            finish(False, "connection failed (ICE/DTLS)")

    async def count_frames(track):
        try:
            while True:
                frame = await track.recv()  # decoded by aiortc (VP8/H.264 -> av.VideoFrame)
                frames["n"] += 1
                frames["size"] = f"{frame.width}x{frame.height}"
                if frames["n"] >= args.video_frames:
                    enough_frames.set()
        except MediaStreamError:
            pass

    @pc.on("track")
    def on_track(track):
        result["tracks"] = result.get("tracks", []) + [track.kind]
        if track.kind == "video":
            asyncio.ensure_future(count_frames(track))

    @pc.on("datachannel")
    def on_channel(channel):
        digest = hashlib.sha256()
        received = {"bytes": 0, "first": None}

        @channel.on("message")
        def on_message(msg):
            if isinstance(msg, bytes):
                if received["first"] is None:
                    received["first"] = time.monotonic()
                digest.update(msg)
                received["bytes"] += len(msg)
                return
            msg = json.loads(msg)
            if msg.get("type") == "end":
                result["bytes"] = received["bytes"]
                result["sha256"] = digest.hexdigest()
                if received["first"] is not None:
                    result["transfer_s"] = round(time.monotonic() - received["first"], 3)
                channel.send(json.dumps({"type": "received", "bytes": received["bytes"],
                                         "sha256": digest.hexdigest()}))
                file_done.set()
            elif msg.get("type") == "bye":
                asyncio.ensure_future(on_bye())

        async def on_bye():
            if not file_done.is_set():
                finish(False, "bye before the file was complete")
                return
            try:  # the browser says bye once it saw our video; ours may still be arriving
                await asyncio.wait_for(enough_frames.wait(), 10)
            except asyncio.TimeoutError:
                finish(False, f"decoded only {frames['n']} video frames (< {args.video_frames})")
                return
            finish(True)

    offer = await read_json(os.path.join(args.signal_dir, "offer.json"))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
    if "m=video" in offer["sdp"]:
        pc.addTrack(SmallVideo())  # rides the offer's sendrecv video transceiver
    elif args.video_frames > 0:
        raise RuntimeError("the offer has no video but --video-frames > 0")
    await pc.setLocalDescription(await pc.createAnswer())
    result["gathered"] = [
        f"{f[7]} {f[4]}:{f[5]}/{f[2].lower()}"
        for f in (line.split() for line in pc.localDescription.sdp.splitlines()
                  if line.startswith("a=candidate:")) if len(f) >= 8]
    if not result["gathered"]:
        raise RuntimeError("no local ICE candidates gathered (TURN allocation refused?)")
    write_json(os.path.join(args.signal_dir, "answer.json"),
               {"id": offer["id"], "type": "answer", "sdp": pc.localDescription.sdp})
    ok, error = await done
    result.update(pair_info(pc))
    result["video_frames_decoded"] = frames["n"]
    result["video_frame_size"] = frames["size"]
    stats = await pc.getStats()
    for s in stats.values():
        if s.type == "inbound-rtp" and s.kind == "video":
            result["inbound_rtp_video"] = {"packetsReceived": s.packetsReceived,
                                           "packetsLost": s.packetsLost}
    return ok, error


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signal-dir", required=True)
    p.add_argument("--api", help="turnpike API base URL, e.g. http://203.0.113.1:8080")
    p.add_argument("--turn", help="one TURN URL instead of the API's (needs --username, --credential)")
    p.add_argument("--username")
    p.add_argument("--credential")
    p.add_argument("--token", help="bearer token for the API")
    p.add_argument("--user", default="aiortc-peer")
    p.add_argument("--prefer", default="transport=udp", help="use the first TURN URL containing this")
    p.add_argument("--video-frames", type=int, default=10, help="frames to decode (0: no video)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    if not args.api and not (args.turn and args.username and args.credential):
        p.error("--api, or --turn with --username and --credential, is required")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR, stream=sys.stderr)
    if not args.verbose:
        for name in ("aioice", "aiortc"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    result = {"ok": False, "role": "aiortc-answer", "turn": None, "bytes": 0, "error": None}
    start = time.monotonic()

    async def guarded():
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
        try:
            ok, error = await asyncio.wait_for(run(args, result), args.timeout)
            result["ok"], result["error"] = ok, error
        except asyncio.CancelledError:
            result["error"] = "terminated"
        except asyncio.TimeoutError:
            pc = result.get("_pc")
            state = f" (ice {pc.iceConnectionState}, connection {pc.connectionState})" if pc else ""
            result["error"] = f"timeout after {args.timeout:g}s{state}"
        except Exception as e:  # report, never traceback-only
            result["error"] = f"{type(e).__name__}: {e}"
        finally:
            pc = result.pop("_pc", None)
            if pc is not None:
                if result.get("local_type") is None:
                    result.update(pair_info(pc))
                try:
                    await asyncio.wait_for(pc.close(), 5)
                except Exception:
                    pass

    asyncio.run(guarded())
    t_connected = result.pop("t_connected", None)
    result["connect_s"] = round(t_connected - start, 3) if t_connected else None
    result["elapsed_s"] = round(time.monotonic() - start, 3)
    write_json(os.path.join(args.signal_dir, "peer_result.json"), result)
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
