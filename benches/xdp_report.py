#!/usr/bin/env python3
"""Turns the results.jsonl of benches/xdp_lab.sh into the markdown tables of
docs/PERFORMANCE.md ("Kernel fast path").

    python3 benches/xdp_report.py OUTDIR        # markdown to stdout
    python3 benches/xdp_report.py --line JSON   # one run in one line (xdp_lab.sh's log)
"""
import json
import os
import re
import sys

NAMES = {
    "xdp": "turnpike, XDP",
    "userspace": "turnpike, userspace",
    "coturn": "coturn",
    "forwarder": "bare forwarder",
}
ORDER = ["xdp", "userspace", "coturn", "forwarder"]
LOSSLESS = 0.1  # percent


def fmt(v, spec="{:.2f}"):
    return "–" if v is None else spec.format(v)


def per_relayed(d, seconds):
    """CPU seconds per relayed packet, in µs."""
    if seconds is None or not d.get("relayed"):
        return None
    return seconds * 1e6 / d["relayed"]


def server_cpu(d):
    """With SPLIT=1: µs of CPU 0 (the server's process and its interface's NAPI thread)
    per relayed packet."""
    busy = d.get("cpu_busy_s")
    return per_relayed(d, busy[0]) if busy else None


def split(d):
    """CPU 0 / CPU 1 per relayed packet: the server side and the load side with SPLIT=1."""
    busy = d.get("cpu_busy_s") or []
    return " / ".join(fmt(per_relayed(d, b)) for b in busy[:2])


def one_line(d):
    return "%.0f pkt/s sent, loss %.3f%%, machine %s us/relayed (CPU 0 / CPU 1 %s), RTT p50/p99 %s/%s us" % (
        d.get("achieved_pps", 0), d.get("loss_pct", 0), fmt(d.get("machine_us_per_pkt")),
        split(d), d["lat_us"]["p50"], d["lat_us"]["p99"])


def main():
    if sys.argv[1] == "--line":
        print(one_line(json.loads(sys.argv[2])))
        return
    outdir = sys.argv[1]
    runs = [json.loads(l) for l in open(os.path.join(outdir, "results.jsonl")) if l.strip()]
    ramp, work = {}, {}
    for r in runs:
        if r.get("kind") != "load":
            continue
        parts = r["label"].split("/")
        if parts[0] == "ramp":
            ramp.setdefault(parts[1], {})[int(parts[2])] = r
        elif parts[0] == "work":
            work[(parts[1], parts[2], int(parts[3]))] = r
    targets = [t for t in ORDER if t in ramp]
    out = []
    p = out.append
    p("Lab: two network namespaces joined by a veth (benches/xdp_lab.sh); echo mode (client → "
      "relay → peer → relay → client), 10 channels, 200-byte payloads, bursts of 10. CPU is "
      "machine-wide (both CPUs' wall time less their idle time in /proc/stat, softirq "
      "included) in µs per relayed packet (two per echo); in brackets the same for CPU 0 "
      "and CPU 1 alone: with SPLIT=1, CPU 0 is the server side (its process and its "
      "interface's NAPI thread, where XDP runs) and CPU 1 the load side (the load generator "
      "and its interface's NAPI thread).")
    p("")
    with open(os.path.join(outdir, "machine.txt")) as f:
        machine = f.read()
    p("```text\n" + machine.rstrip() + "\n```")
    # Only with the server side pinned to CPU 0 is CPU 0 the server's cost.
    split_run = "SPLIT=1" in machine
    p("")

    # 1. the ramp
    rates = sorted({rate for t in targets for rate in ramp[t]})
    p("#### Rate ramp: machine µs per relayed packet (CPU 0 / CPU 1), loss, RTT p99")
    p("")
    p("| sent pkt/s | " + " | ".join(NAMES[t] for t in targets) + " |")
    p("|---:|" + "---|" * len(targets))
    for rate in rates:
        cells = []
        for t in targets:
            d = ramp[t].get(rate)
            if d is None:
                cells.append("")
                continue
            cells.append("%s (%s), %.2f%%, %d µs" % (
                fmt(d.get("machine_us_per_pkt")), split(d), d["loss_pct"], d["lat_us"]["p99"]))
        p("| %d | %s |" % (rate, " | ".join(cells)))
    p("")

    # 2. highest lossless rate
    best = {}
    for t in targets:
        ok = [rate for rate, d in sorted(ramp[t].items()) if d["loss_pct"] < LOSSLESS]
        # the highest rate below the first lossy one
        first_lossy = min([rate for rate, d in ramp[t].items() if d["loss_pct"] >= LOSSLESS], default=None)
        ok = [x for x in ok if first_lossy is None or x < first_lossy]
        best[t] = (max(ok) if ok else None, first_lossy)
    p("#### Highest rate with < 0.1 % loss")
    p("")
    p("| | highest lossless (sent pkt/s) | first lossy step | CPU 0 / CPU 1 busy there | × coturn |")
    p("|---|---:|---:|---|---:|")
    cot = best.get("coturn", (None, None))[0]
    for t in targets:
        hi, lossy = best[t]
        ratio = "%.1f×" % (hi / cot) if hi and cot else "–"
        more = "" if lossy else " (no step lost: the load generator's ceiling)"
        busy = "–"
        if lossy:
            d = ramp[t][lossy]
            b = d.get("cpu_busy_s") or []
            busy = " / ".join("%.0f%%" % (x / d["duration"] * 100) for x in b[:2])
        p("| %s | %s%s | %s | %s | %s |" % (NAMES[t], fmt(hi, "{:,}"), more, fmt(lossy, "{:,}"), busy, ratio))
    p("")

    # 3. XDP against the forwarder, at each rate both ran without loss
    if "xdp" in ramp and "forwarder" in ramp:
        p("#### XDP ÷ bare forwarder, machine-wide CPU per relayed packet")
        p("")
        side = "server side (CPU 0)" if split_run else "CPU 0 (nothing pinned)"
        p("| sent pkt/s | machine-wide | %s | RTT p99 XDP / forwarder / turnpike userspace (µs) |" % side)
        p("|---:|---:|---:|---|")
        for rate in rates:
            x, f = ramp["xdp"].get(rate), ramp["forwarder"].get(rate)
            if not x or not f or x["loss_pct"] >= LOSSLESS or f["loss_pct"] >= LOSSLESS:
                continue
            u = ramp.get("userspace", {}).get(rate)
            r1 = x["machine_us_per_pkt"] / f["machine_us_per_pkt"] if f.get("machine_us_per_pkt") else None
            sx, sf = server_cpu(x), server_cpu(f)
            r2 = sx / sf if sx is not None and sf else None
            p("| %d | %s | %s | %d / %d / %s |" % (
                rate, fmt(r1, "{:.2f}×"), fmt(r2, "{:.2f}×"), x["lat_us"]["p99"], f["lat_us"]["p99"],
                u["lat_us"]["p99"] if u else "–"))
        p("")

    # 4. the work: channels and sizes
    wrates = {d["rate"] for d in work.values()}
    wrate = min(wrates) if wrates else None
    for axis, title, base in (("channels", "Channels (200 B)", 10), ("size", "Payload bytes (10 channels)", 200)):
        keys = sorted({k[2] for k in work if k[1] == axis} | ({base} if axis == "channels" else set()))
        if not keys:
            continue
        p("#### %s at %s sent pkt/s: machine µs per relayed packet (CPU 0 / CPU 1), loss, × the %s figure (machine; server side)" % (
            title, fmt(wrate, "{:,}"), "10-channel" if axis == "channels" else "200-byte"))
        p("")
        p("| %s | %s |" % (axis, " | ".join(NAMES[t] for t in targets)))
        p("|---:|" + "---|" * len(targets))

        def get(t, k):
            d = work.get((t, axis, k))
            if d is None and axis == "channels" and k == 10:
                d = work.get((t, "size", 200)) or ramp.get(t, {}).get(wrate)
            return d

        for k in keys:
            cells = []
            for t in targets:
                d, b = get(t, k), get(t, base)
                if d is None:
                    cells.append("")
                    continue
                rel = ""
                if b is not None and b.get("machine_us_per_pkt") and d.get("machine_us_per_pkt"):
                    rel = ", %.2f×" % (d["machine_us_per_pkt"] / b["machine_us_per_pkt"])
                    if server_cpu(b) and server_cpu(d) is not None:
                        rel += "; %.2f×" % (server_cpu(d) / server_cpu(b))
                cells.append("%s (%s), %.2f%%%s" % (
                    fmt(d.get("machine_us_per_pkt")), split(d), d["loss_pct"], rel))
            p("| %d | %s |" % (k, " | ".join(cells)))
        p("")

    # 5. kernel memory of the maps
    maps = os.path.join(outdir, "maps-xdp.txt")
    if os.path.exists(maps):
        rows = []
        for line in open(maps):
            f = dict(re.findall(r"(\w+):\s+(\d+)", line))
            if f:
                rows.append(f)
        if rows:
            p("#### The program's maps (from /proc/PID/fdinfo of the XDP run)")
            p("")
            p("| map type | key B | value B | max entries | memlock |")
            p("|---:|---:|---:|---:|---:|")
            total = 0
            for f in rows:
                total += int(f.get("memlock", 0))
                p("| %s | %s | %s | %s | %.1f MiB |" % (
                    f.get("map_type"), f.get("key_size"), f.get("value_size"), f.get("max_entries"),
                    int(f.get("memlock", 0)) / 1048576))
            p("| total | | | | %.1f MiB |" % (total / 1048576))
            p("")
    skipped = [r["label"] for r in runs if r.get("kind") in ("skipped", "failed")]
    if skipped:
        p("Skipped or failed: " + ", ".join(skipped))
    print("\n".join(out))


if __name__ == "__main__":
    main()
