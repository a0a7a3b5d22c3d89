#!/usr/bin/env python3
"""Turns the results.jsonl of benches/compare.sh into the markdown tables of
docs/PERFORMANCE.md.

    python3 benches/report.py OUTDIR                       # markdown to stdout
    python3 benches/report.py OUTDIR --splice docs/PERFORMANCE.md
        # replaces the text between <!-- results:begin --> and <!-- results:end -->
"""
import json
import os
import statistics
import sys

NAMES = {
    "coturn1": "coturn 1 relay thread",
    "coturn": "coturn default threads",
    "turnpike": "turnpike",
    "forwarder": "bare forwarder",
}
ORDER = ["coturn1", "coturn", "turnpike", "forwarder"]


def load(outdir):
    runs = []
    with open(os.path.join(outdir, "results.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                runs.append(json.loads(line))
    return runs


def fmt(v, spec="{:.2f}"):
    return "–" if v is None else spec.format(v)


def one_line(d):
    if d.get("kind") == "allocations":
        b = d.get("bytes_per_allocation")
        return "%d/%d allocations, %.0f/s, %s B per idle allocation" % (
            d["created"], d["requested"], d["allocations_per_sec"], "-" if b is None else "%.0f" % b)
    u = d.get("server_us_per_pkt")
    return "%.0f pkt/s, loss %.3f%%, %s us/pkt, p50/p99 %s/%s us, load gen %.0f%% CPU" % (
        d.get("achieved_pps", 0), d.get("loss_pct", 0), "-" if u is None else "%.2f" % u,
        d["lat_us"]["p50"], d["lat_us"]["p99"], d["bench_cpu_s"] / d["duration"] * 100)


def main():
    if sys.argv[1] == "--line":
        print(one_line(json.loads(sys.argv[2])))
        return
    outdir = sys.argv[1]
    runs = load(outdir)
    cpu = {}  # (target, pinning, mode, rate) -> [runs]
    ramp = {}
    allocs = {}
    selftest = None
    skipped = [r["label"] for r in runs if r.get("kind") in ("skipped", "failed")]
    for r in runs:
        lab = r.get("label") or ""
        parts = lab.split("/")
        if r.get("kind") == "load" and parts[0] in ("cpu", "ramp"):
            _, t, pin, mode, rate = parts
            key = (t, pin, mode, int(rate))
            cpu.setdefault(key, []).append(r)
            if pin == "pinned":
                ramp.setdefault((t, mode), []).append((int(rate), r["loss_pct"]))
        elif r.get("kind") == "allocations":
            allocs[parts[1]] = r
        elif r.get("kind") == "load" and parts[0] == "selftest":
            selftest = r
    targets = [t for t in ORDER if any(k[0] == t for k in cpu) or t in allocs]
    pins = [p for p in ("pinned", "unpinned") if any(k[1] == p for k in cpu)]
    modes = [m for m in ("oneway", "echo") if any(k[2] == m for k in cpu)]
    rates = sorted({k[3] for k in cpu if any(x["label"].startswith("cpu/") for x in cpu[k])})

    def us(t, pin, mode, rate):
        rs = [x for x in cpu.get((t, pin, mode, rate), []) if x["label"].startswith("cpu/")]
        vals = [x["server_us_per_pkt"] for x in rs if x.get("server_us_per_pkt")]
        return statistics.median(vals) if vals else None

    def first(t, pin, mode, rate):
        rs = [x for x in cpu.get((t, pin, mode, rate), []) if x["label"].startswith("cpu/")]
        return rs[0] if rs else None

    out = []
    w = out.append
    machine = os.path.join(outdir, "machine.txt")
    if os.path.exists(machine):
        w("Run: `" + os.path.basename(os.path.abspath(outdir)) + "`")
        w("")
        w("```")
        w(open(machine).read().rstrip())
        w("```")
        w("")
    for pin in pins:
        w(f"### Server CPU per relayed packet (µs), {pin}")
        w("")
        cols = [NAMES[t] for t in targets if t != "turnpike" or True]
        hdr = "| mode | rate (pkt/s) | " + " | ".join(cols)
        ratio_cols = []
        if "turnpike" in targets and "coturn1" in targets:
            ratio_cols.append("turnpike / coturn 1 thread")
        if "turnpike" in targets and "coturn" in targets:
            ratio_cols.append("turnpike / coturn default")
        if "turnpike" in targets and "forwarder" in targets:
            ratio_cols.append("turnpike / forwarder")
        if "coturn1" in targets and "forwarder" in targets:
            ratio_cols.append("coturn 1 thread / forwarder")
        w(hdr + (" | " if ratio_cols else "") + " | ".join(ratio_cols) + " |")
        w("|" + "---|" * (2 + len(cols) + len(ratio_cols)))
        for mode in modes:
            for rate in rates:
                v = {t: us(t, pin, mode, rate) for t in targets}
                row = [mode, f"{rate:,}"] + [fmt(v[t]) for t in targets]

                def ratio(a, b):
                    return fmt(v[a] / v[b]) if v.get(a) and v.get(b) else "–"

                if "turnpike / coturn 1 thread" in ratio_cols:
                    row.append(ratio("turnpike", "coturn1"))
                if "turnpike / coturn default" in ratio_cols:
                    row.append(ratio("turnpike", "coturn"))
                if "turnpike / forwarder" in ratio_cols:
                    row.append(ratio("turnpike", "forwarder"))
                if "coturn 1 thread / forwarder" in ratio_cols:
                    row.append(ratio("coturn1", "forwarder"))
                w("| " + " | ".join(row) + " |")
        w("")
        w(f"### Loss and latency, {pin} (loss %, p50 / p99 µs: one way client→peer, round trip in echo)")
        w("")
        w("| mode | rate (pkt/s) | " + " | ".join(NAMES[t] for t in targets) + " |")
        w("|" + "---|" * (2 + len(targets)))
        for mode in modes:
            for rate in rates:
                row = [mode, f"{rate:,}"]
                for t in targets:
                    r = first(t, pin, mode, rate)
                    if r is None:
                        row.append("–")
                    else:
                        row.append(
                            f"{r['loss_pct']:.3f}%, {r['lat_us']['p50']} / {r['lat_us']['p99']}"
                        )
                w("| " + " | ".join(row) + " |")
        w("")

    highest = {}
    if ramp:
        w("### Highest rate with < 0.1% loss (pinned; stepping up until the first lossy run)")
        w("")
        w("| mode | " + " | ".join(NAMES[t] for t in targets) + " |")
        w("|" + "---|" * (1 + len(targets)))
        for mode in modes:
            row = [mode]
            for t in targets:
                steps = sorted(ramp.get((t, mode), []))
                best = None
                failed_at = None
                for rate, loss in steps:
                    if loss < 0.1:
                        best = rate
                    else:
                        failed_at = rate
                        break
                highest[(t, mode)] = (best, failed_at)
                cell = "–" if best is None else f"{best:,}"
                if failed_at is not None:
                    cell += f" (lost at {failed_at:,})"
                elif steps:
                    cell += " (no loss up to the highest rate tried)"
                row.append(cell)
            w("| " + " | ".join(row) + " |")
        w("")

    if allocs:
        w("### Allocations (unpinned, fresh server each, 64 transactions in flight)")
        w("")
        w("| server | allocations | allocations/s | RSS before → with idle allocations | bytes per idle allocation | RSS after deleting | server CPU µs per allocation |")
        w("|---|---|---|---|---|---|---|")
        for t in targets:
            a = allocs.get(t)
            if not a:
                continue
            mib = lambda b: "–" if b is None else f"{b / 1048576:.1f} MiB"
            w(
                f"| {NAMES[t]} | {a['created']:,} / {a['requested']:,} | {a['allocations_per_sec']:,.0f} | "
                f"{mib(a['rss_before'])} → {mib(a['rss_idle'])} | {fmt(a['bytes_per_allocation'], '{:,.0f}')} | "
                f"{mib(a['rss_after_delete'])} | {fmt(a['server_cpu_us_per_allocation'], '{:.1f}')} |"
            )
        w("")

    if selftest:
        handled = selftest["sent"] + selftest["peer_rx"]
        per_core = handled / selftest["bench_cpu_s"] if selftest["bench_cpu_s"] else 0
        w("### Load generator capacity")
        w("")
        w(
            f"One thread, unpinned, against the forwarder, target {selftest['rate']:,} pkt/s: sent "
            f"{selftest['achieved_pps']:,.0f} pkt/s using {selftest['bench_cpu_s'] / selftest['duration'] * 100:.0f}% of a core "
            f"({selftest['bench_us_per_pkt']:.2f} µs per datagram sent or received, i.e. ≈ {per_core:,.0f} datagrams per CPU-second); "
            f"the forwarder delivered {selftest['peer_rx']:,} of {selftest['sent']:,} ({selftest['loss_pct']:.1f}% loss)."
        )
        w("")

    # ---- targets of issue 8 ----
    if "turnpike" in targets:
        w("### Issue 8 targets, this run")
        w("")
        lines = []
        for mode in modes:
            for rate in rates:
                tp = us("turnpike", "pinned", mode, rate)
                c1 = us("coturn1", "pinned", mode, rate)
                fw = us("forwarder", "pinned", mode, rate)
                if tp is None:
                    continue
                if rate >= 30000 and c1:
                    ok = tp <= 0.9 * c1
                    lines.append(f"- {mode} {rate:,}: turnpike {tp:.2f} µs vs 0.9 × coturn-1-thread {0.9 * c1:.2f} µs → **{'met' if ok else 'NOT met'}** (ratio {tp / c1:.2f})")
                if rate >= 30000 and fw:
                    ok = tp <= 1.2 * fw
                    lines.append(f"- {mode} {rate:,}: turnpike {tp:.2f} µs vs 1.2 × forwarder {1.2 * fw:.2f} µs → **{'met' if ok else 'NOT met'}** (ratio {tp / fw:.2f})")
                if rate < 30000 and c1:
                    ok = tp <= c1
                    lines.append(f"- {mode} {rate:,}: turnpike {tp:.2f} µs vs coturn-1-thread {c1:.2f} µs (no worse) → **{'met' if ok else 'NOT met'}** (ratio {tp / c1:.2f})")
        for mode in modes:
            tb, tf = highest.get(("turnpike", mode), (None, None))
            cb, cf = highest.get(("coturn1", mode), (None, None))
            if tb is not None or tf is not None:
                if cf is None:
                    ok = tf is None
                    lines.append(f"- {mode}: no loss below the rate where coturn-1-thread starts losing (coturn lost at no rate tried; turnpike {'lost at ' + format(tf, ',') if tf else 'lost at none'}) → **{'met' if ok else 'NOT met'}**")
                else:
                    ok = tf is None or tf >= cf
                    lines.append(f"- {mode}: coturn-1-thread first lost at {cf:,} pkt/s, turnpike {'at ' + format(tf, ',') if tf else 'at none tried'} → **{'met' if ok else 'NOT met'}**")
        a = allocs.get("turnpike")
        if a:
            ok = a["allocations_per_sec"] >= 10000
            lines.append(f"- allocations/s: {a['allocations_per_sec']:,.0f} (target ≥ 10,000) → **{'met' if ok else 'NOT met'}**")
            b = a.get("bytes_per_allocation")
            if b is not None:
                ok = b <= 2048
                lines.append(f"- memory per idle allocation: {b:,.0f} B (target ≤ 2,048) → **{'met' if ok else 'NOT met'}**")
        lines.append("- memory flat over a long churn run: not measured by this script")
        out.extend(lines)
        w("")
    if skipped:
        w("Skipped or failed runs: " + ", ".join(skipped))
        w("")
    text = "\n".join(out)
    if len(sys.argv) > 3 and sys.argv[2] == "--splice":
        path = sys.argv[3]
        doc = open(path).read()
        b, e = "<!-- results:begin -->", "<!-- results:end -->"
        if b not in doc or e not in doc:
            sys.exit(f"{path}: markers {b} / {e} not found")
        head, rest = doc.split(b, 1)
        _, tail = rest.split(e, 1)
        open(path, "w").write(head + b + "\n" + text + "\n" + e + tail)
    else:
        print(text)


if __name__ == "__main__":
    main()
