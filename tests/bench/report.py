#!/usr/bin/env python3
"""Turns target/bench/results.jsonl (written by run.sh) into report.md and throughput.svg.

Standard library only. Usage:
    python3 tests/bench/report.py --results target/bench/results.jsonl \
        --meta target/bench/meta.env --out target/bench
"""

import argparse
import json
import math
import statistics
from collections import defaultdict
from html import escape

PLAIN_TARGETS = [
    "direct",
    "cpu1-only",
    "wsgate-echo",
    "wsgate-relay",
    "wsgate-passthrough",
    "nginx",
    "nginx-64k",
    "haproxy",
    "haproxy-64k",
]
# Connections at which the issue sets the idle-memory targets.
IDLE_TARGET_CONNS = 5000
# The same programs serving wss:// (run.sh's TLS_TARGETS): throughput only.
TLS_TARGETS = [
    "direct+tls",
    "wsgate-echo+tls",
    "wsgate-relay+tls",
    "wsgate-passthrough+tls",
    "nginx+tls",
    "haproxy-64k+tls",
]
TARGETS = PLAIN_TARGETS + TLS_TARGETS
COLORS = {
    "direct": "#7f7f7f",
    "cpu1-only": "#c7c7c7",
    "wsgate-echo": "#1f4e9c",
    "wsgate-relay": "#3b7dd8",
    "wsgate-passthrough": "#8db8f0",
    "nginx": "#2e8b57",
    "nginx-64k": "#8fd19e",
    "haproxy": "#d9822b",
    "haproxy-64k": "#f2c18d",
}
COLORS.update({t: COLORS[t.removesuffix("+tls")] for t in TLS_TARGETS})


def size_label(s):
    return f"{s} B" if s.isdigit() else s.replace("KiB", " KiB").replace("MiB", " MiB")


def load_meta(path):
    meta = {}
    try:
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    meta[k] = v
    except FileNotFoundError:
        pass
    return meta


def load_results(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def med(xs):
    return statistics.median(xs) if xs else None


def fmt_rate(x):
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.0f} k"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


class Data:
    def __init__(self, rows, meta):
        self.meta = meta
        self.sizes = meta.get("sizes", "20 1KiB 16KiB 1MiB").split()
        self.tp = defaultdict(list)  # (target, size) -> [result]
        self.lat = defaultdict(list)  # (scenario, target) -> [result]
        self.lat_rounds = defaultdict(dict)  # (scenario, target) -> {round: result}
        self.idle = {}
        self.errors = []
        for r in rows:
            if "error" in r:
                self.errors.append(r)
                continue
            res = r["result"]
            if r["phase"] == "throughput":
                self.tp[(r["target"], r["size"])].append(res)
            elif r["phase"].startswith("latency"):
                self.lat[(r["phase"], r["target"])].append(res)
                self.lat_rounds[(r["phase"], r["target"])][r["round"]] = res
            elif r["phase"] == "idle":
                self.idle[r["target"]] = res
        self.targets = [t for t in TARGETS if any((t, s) in self.tp for s in self.sizes)]

    def avail(self, t):
        v = self.meta.get(f"avail.{t}")
        return v is None or v == "yes"

    def started(self, t):
        """Whether this run tried the target at all (TLS=0 runs have no wss:// targets)."""
        return f"avail.{t}" in self.meta or any(k[0] == t for k in self.tp)

    def tls_suites(self):
        return sorted({r["tls"] for rs in self.tp.values() for r in rs if r.get("tls")})

    def why(self, t):
        return self.meta.get(f"avail.{t}", "not measured")

    def tp_values(self, t, s, key="msgs_per_s"):
        return [r[key] for r in self.tp.get((t, s), []) if r.get(key) is not None]

    def tp_med(self, t, s, key="msgs_per_s"):
        return med(self.tp_values(t, s, key))

    def lat_values(self, sc, t, key):
        return [r[key] for r in self.lat.get((sc, t), [])]

    def lat_med(self, sc, t, key):
        return med(self.lat_values(sc, t, key))

    def lat_paired_diff(self, sc, t, base, key):
        """Median over rounds of (t − base) within each round: the rounds interleave the targets,
        so a difference taken inside a round leaves out what drifted between rounds."""
        a, b = self.lat_rounds.get((sc, t), {}), self.lat_rounds.get((sc, base), {})
        return med([a[k][key] - b[k][key] for k in a if k in b])


def bound_hint(rs):
    """Which CPU limited a throughput run: the target's (CPU 0) or the load generator's (CPU 1,
    shared with the backend behind proxies)."""
    tgt = med([r.get("target_cpu_util", 0) for r in rs])
    cpu1 = med([r.get("loadgen_cpu_util", 0) + r.get("aux_cpu_util", 0) for r in rs])
    other = med([r.get("other_cpu_util", 0) for r in rs])
    if tgt is None:
        return "–"
    if tgt >= 0.9:
        return "target"
    if cpu1 >= 0.9:
        return "CPU 1"
    if other >= 0.2:
        return "other processes"
    return "neither"


def checks(d):
    """The issue's targets: (what, measured text, threshold text, verdict)."""
    out = []

    def ratio_check(name, a, b, sizes, threshold):
        for s in sizes:
            if s not in d.sizes:
                continue
            va, vb = d.tp_med(a, s), d.tp_med(b, s)
            what = f"{name} at {size_label(s)}"
            if va is None or vb is None:
                missing = [t for t, v in ((a, va), (b, vb)) if v is None]
                out.append((what, "not available: " + ", ".join(
                    f"{t} ({d.why(t)})" for t in missing), f"≥ {threshold:.2f}×", "N/A"))
                continue
            ratio = va / vb
            ca, cb = d.tp_med(a, s, "target_cpu_us_per_msg"), d.tp_med(b, s, "target_cpu_us_per_msg")
            cpu = f"; by CPU/msg {cb / ca:.2f}×" if ca and cb else ""
            # Plain proxied targets load CPU 1 as cpu1-only does; near it, the ratio measures
            # CPU 1, not the two targets.
            c1 = d.tp_med("cpu1-only", s) if not a.endswith("+tls") and b != "direct" else None
            if c1:
                cpu += f"; {va / c1:.0%} and {vb / c1:.0%} of cpu1-only"
            out.append((what, f"{ratio:.2f}× ({fmt_rate(va)} vs {fmt_rate(vb)} msgs/s{cpu})",
                        f"≥ {threshold:.2f}×", "PASS" if ratio >= threshold else "FAIL"))

    # The throughput targets hold for plain TCP and, when this run had them, for TLS.
    for sfx, label in [("", ""), ("+tls", " (TLS)")]:
        if sfx and not d.started("direct" + sfx):
            continue
        ratio_check("echo / direct" + label, "wsgate-echo" + sfx, "direct" + sfx, d.sizes, 0.95)
        ratio_check("passthrough / nginx" + label, "wsgate-passthrough" + sfx, "nginx" + sfx,
                    ["20", "1KiB"], 1.2)
        ratio_check("passthrough / haproxy-64k" + label, "wsgate-passthrough" + sfx,
                    "haproxy-64k" + sfx, ["16KiB", "1MiB"], 1.0)
        ratio_check("relay / nginx" + label, "wsgate-relay" + sfx, "nginx" + sfx, ["20", "1KiB"],
                    1.0)
        ratio_check("relay / passthrough" + label, "wsgate-relay" + sfx,
                    "wsgate-passthrough" + sfx, ["1MiB"], 0.8)
        # "CPU per relayed echo below nginx's in the same run" names no size, so every size is
        # judged: the target's CPU time per echoed message (both directions) in the same rounds.
        for s in d.sizes:
            relay, nginx = "wsgate-relay" + sfx, "nginx" + sfx
            ca = d.tp_med(relay, s, "target_cpu_us_per_msg")
            cb = d.tp_med(nginx, s, "target_cpu_us_per_msg")
            what = f"CPU per relayed echo{label} at {size_label(s)}"
            if ca is None or cb is None:
                missing = [t for t, v in ((relay, ca), (nginx, cb)) if v is None]
                out.append((what, "not available: " + ", ".join(
                    f"{t} ({d.why(t)})" for t in missing), "below nginx", "N/A"))
                continue
            out.append((what, f"{ca:.2f} µs vs nginx {cb:.2f} µs ({ca / cb:.2f}×)",
                        "below nginx", "PASS" if ca < cb else "FAIL"))

    base = d.lat_med("latency-1conn", "direct", "p50_us")
    # nginx and HAProxy for reference: what a hop through the usual proxies adds on the same
    # machine, the floor a target of "≤ 25 µs" is measured against. They are left out when not
    # measured rather than reported N/A.
    for t, judged in [("wsgate-echo", True), ("wsgate-relay", True),
                      ("wsgate-passthrough", True), ("nginx", False), ("haproxy", False)]:
        what = f"added p50 latency, {t} − direct (1 connection, 20 B)"
        target = "≤ 25 µs" if judged else "for reference"
        v = d.lat_med("latency-1conn", t, "p50_us")
        if v is None or base is None:
            if judged:
                why = d.why(t) if v is None else "direct not measured"
                out.append((what, f"not available: {why}", target, "N/A"))
            continue
        paired = d.lat_paired_diff("latency-1conn", t, "direct", "p50_us")
        status = ("PASS" if v - base <= 25 else "FAIL") if judged else "–"
        out.append((what, f"{v - base:.1f} µs ({v:.1f} vs {base:.1f} µs; within a round, "
                          f"median {paired:.1f} µs)", target, status))

    rate = d.meta.get("lat_rate", "20000")
    v = d.lat_med("latency-load", "wsgate-relay", "p99_us")
    what = f"relay p99 at {int(rate) // 1000}k msgs/s, 1 KiB"
    if v is None:
        out.append((what, f"not available: {d.why('wsgate-relay')}", "≤ 1 ms", "N/A"))
    else:
        p99s = d.lat_values("latency-load", "wsgate-relay", "p99_us")
        out.append((what, f"{v / 1000:.3f} ms [{min(p99s) / 1000:.3f} – {max(p99s) / 1000:.3f}]",
                    "≤ 1 ms", "PASS" if v <= 1000 else "FAIL"))

    # The targets are set at 5,000 connections: with fewer (IDLE_CONNS), the process's fixed
    # costs spread over too few connections to say anything per connection, so the row is
    # shown but not judged.
    for t, limit in [("wsgate-echo", 6), ("wsgate-relay", 8), ("wsgate-passthrough", 4)]:
        what = f"idle memory, {t}"
        target = f"≤ {limit} KiB/conn at {IDLE_TARGET_CONNS:,}"
        r = d.idle.get(t)
        if r is None:
            out.append((what, f"not available: {d.why(t)}", target, "N/A"))
        else:
            k = r["kib_per_conn"]
            if r["opened"] >= IDLE_TARGET_CONNS:
                status = "PASS" if k <= limit else "FAIL"
            else:
                status = "– (too few connections to judge)"
            out.append((what, f"{k:.2f} KiB/conn ({r['opened']} connections)", target, status))
    return out


def report_md(d):
    m = d.meta
    L = []
    quick = m.get("quick") == "1"
    L.append("# wsgate benchmark report\n")
    if quick:
        L.append("> **QUICK run** (one round of 1 s, two sizes): a check of the harness, not figures "
                 "to quote.\n")
    others = [r.get("other_cpu_util") for rs in list(d.tp.values()) + list(d.lat.values())
              for r in rs if r.get("other_cpu_util") is not None]
    if others and med(others) >= 0.1:
        L.append(f"> **Noisy:** other processes used {med(others):.2f} CPUs (median over runs, max "
                 f"{max(others):.2f}) while this ran, on a {m.get('nproc', '?')}-CPU machine; the "
                 f"figures below measure the contention as much as the programs.\n")
    L.append("## Machine and settings\n")
    L.append("| | |")
    L.append("| --- | --- |")
    for k, label in [("date", "date (UTC)"), ("nproc", "CPUs (nproc)"), ("cpu_model", "CPU model"),
                     ("kernel", "kernel"), ("memory", "memory"),
                     ("loadavg", "load average at start"), ("rustc", "rustc"),
                     ("commit", "wsgate commit"), ("nginx", "nginx"), ("haproxy", "HAProxy")]:
        L.append(f"| {label} | {m.get(k, '?') or '–'} |")
    L.append(f"| pinning | target under test on CPU {m.get('target_cpu')}, load generator on CPU "
             f"{m.get('load_cpu')}, echo backend behind the proxies on CPU {m.get('backend_cpu')} "
             f"for throughput and on CPU {m.get('lat_backend_cpu', m.get('backend_cpu'))} for "
             f"latency (direct's backend is on CPU {m.get('target_cpu')}; cpu1-only's on CPU "
             f"{m.get('load_cpu')}) |")
    L.append(f"| throughput runs | {m.get('rounds')} rounds × {m.get('duration')} "
             f"(after {m.get('warmup')} warm-up), interleaved; {m.get('conns')} connections "
             f"({m.get('conns_1mib')} at 1 MiB); in flight per connection: {m.get('in_flight')} |")
    L.append(f"| wsgate settings | `max_message_size: {m.get('wsgate_max_message_size')}`, "
             f"`receive_buffer_size: {m.get('wsgate_receive_buffer_size')}`, other keys default; "
             f"{m.get('wsgate_threads', '?')} threads in the process (tokio workers follow the CPU "
             f"affinity: 1) |")
    L.append("| nginx | 1 worker, `proxy_http_version 1.1`, Upgrade/Connection headers; "
             "default buffers, and `-64k`: `proxy_buffer_size 64k` |")
    L.append("| HAProxy | `nbthread 1`, `mode http`; default `tune.bufsize` (16 KiB), and `-64k`: "
             "`tune.bufsize 65536` |")
    if d.started("direct+tls"):
        suites = ", ".join(f"`{x}`" for x in d.tls_suites()) or "?"
        L.append(f"| TLS (`+tls` targets, throughput only) | the client's TLS ends at the target, "
                 f"which forwards plain ws:// to the same backend; negotiated: {suites} (the only "
                 f"suite the load generator offers); P-256 certificate signed by a CA made for the "
                 f"run; wsgate and direct: rustls (ring), nginx and HAProxy: their OpenSSL; "
                 f"nginx `listen ssl` with `ssl_protocols TLSv1.2 TLSv1.3` (1.22 leaves 1.3 out by "
                 f"default), HAProxy `bind ssl crt`, other TLS settings default |")
    L.append("")

    L.append("## Targets\n")
    L.append("| target | status |")
    L.append("| --- | --- |")
    for t in TARGETS:
        if t in TLS_TARGETS and not d.started(t):
            continue
        L.append(f"| {t} | {'measured' if d.avail(t) else 'not available: ' + escape(d.why(t))} |")
    L.append("")

    L.append("## Issue targets\n")
    L.append("Throughput ratios compare medians. \"by CPU/msg\" is the same ratio computed from the "
             "target's CPU time per message instead: what the ratio would be if both were limited "
             "by their own CPU (on 2 cores the load generator and the backend share CPU 1, so a "
             "proxy may be held back by CPU 1 rather than by itself; see *bound* below). \"of "
             "cpu1-only\": each target's rate against the load generator talking straight to a "
             "backend on CPU 1, with no proxy; two proxies both near 100% of it are both held back "
             "by CPU 1, and their ratio cannot show which is faster.\n")
    L.append("| check | measured | target | result |")
    L.append("| --- | --- | --- | --- |")
    for what, measured, thr, verdict in checks(d):
        mark = {"PASS": "**PASS**", "FAIL": "**FAIL**"}.get(verdict, verdict)
        L.append(f"| {what} | {measured} | {thr} | {mark} |")
    L.append("")

    L.append("## Throughput\n")
    L.append("Echoed messages per second, median over rounds [min – max]; closed loop.\n")
    sizes = d.sizes
    L.append("| target | " + " | ".join(size_label(s) for s in sizes) + " |")
    L.append("| --- |" + " --- |" * len(sizes))
    for t in d.targets:
        cells = []
        for s in sizes:
            v = d.tp_values(t, s)
            cells.append(f"{fmt_rate(med(v))} [{fmt_rate(min(v))} – {fmt_rate(max(v))}]" if v else "–")
        L.append(f"| {t} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Echoed payload, MiB/s (median):\n")
    L.append("| target | " + " | ".join(size_label(s) for s in sizes) + " |")
    L.append("| --- |" + " --- |" * len(sizes))
    for t in d.targets:
        L.append(f"| {t} | " + " | ".join(fmt(d.tp_med(t, s, "mib_per_s")) for s in sizes) + " |")
    L.append("")
    L.append("CPU (medians, 100% = one CPU): the target's CPU time per echoed message, its CPU "
             "use, the load generator's and the backend's (both on CPU 1), everything else on the "
             "machine, and what limited the run: the target (≥ 90% of CPU 0), CPU 1 (load "
             "generator + backend ≥ 90%), other processes (≥ 20% of a CPU), or neither.\n")
    L.append("| target | size | µs CPU/msg | target CPU | load gen CPU | backend CPU | other processes | bound |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in sizes:
        for t in d.targets:
            rs = d.tp.get((t, s), [])
            if not rs:
                continue
            pct = lambda key: fmt(100 * med([r[key] for r in rs]), 0) + "%" if key in rs[0] else "–"
            L.append(f"| {t} | {size_label(s)} | {fmt(d.tp_med(t, s, 'target_cpu_us_per_msg'), 2)} | "
                     f"{pct('target_cpu_util')} | {pct('loadgen_cpu_util')} | {pct('aux_cpu_util')} | "
                     f"{pct('other_cpu_util')} | "
                     f"{bound_hint(rs)} |")
    L.append("")
    lost = [(k, r) for k, rs in d.tp.items() for r in rs if r.get("connections_lost")]
    if lost:
        L.append("Runs in which connections ended early: " + ", ".join(
            f"{k[0]} {size_label(k[1])} ({r['connections_lost']}: {r.get('first_error', '?')})"
            for k, r in lost) + "\n")

    L.append("## Latency\n")
    L.append(f"Open loop, measured from each message's intended send time (queueing included), "
             f"medians over {m.get('lat_rounds')} interleaved round(s), p50 and p99 with "
             f"[min – max] over rounds. *1 connection*: 20 B at "
             f"{m.get('lat1_rate')} msgs/s. *under load*: 1 KiB at {m.get('lat_rate')} msgs/s over "
             f"{m.get('lat_conns')} connections. µs. The sender wakes {m.get('lat_spin', '0')} "
             f"before each message is due and polls until it is (0: it sleeps until due). "
             f"*sender lag*: how late the load generator itself sent (timer wake-up, the write "
             f"itself), included in every figure; a large one means the load generator, not the "
             f"target, was late.\n")
    for sc, title in [("latency-1conn", "1 connection, 20 B"), ("latency-load", "under load, 1 KiB")]:
        tg = [t for t in TARGETS if (sc, t) in d.lat]
        if not tg:
            continue
        L.append(f"**{title}**\n")
        L.append("| target | p50 | p90 | p99 | p99.9 | max | achieved msgs/s | sent − measured "
                 "| sender lag p50 / p99 |")
        L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for t in tg:
            rs = d.lat[(sc, t)]
            g = lambda k: med([r[k] for r in rs])
            rng = lambda k: (f"{fmt(g(k))} [{fmt(min(r[k] for r in rs))} – "
                             f"{fmt(max(r[k] for r in rs))}]")
            L.append(f"| {t} | {rng('p50_us')} | {fmt(g('p90_us'))} | {rng('p99_us')} | "
                     f"{fmt(g('p999_us'))} | {fmt(g('max_us'))} | {fmt(g('achieved_rate'), 0)} | "
                     f"{fmt(g('sent_measured') - g('measured'), 0)} | "
                     f"{fmt(g('send_lag_p50_us')) if 'send_lag_p50_us' in rs[0] else '–'} / "
                     f"{fmt(g('send_lag_p99_us')) if 'send_lag_p99_us' in rs[0] else '–'} |")
        L.append("")

    L.append("## Idle memory\n")
    L.append("VmRSS of a fresh target process before and after opening the idle WebSockets "
             "(handshake done, no traffic), divided by the connections; for relay, passthrough "
             "and the proxies this includes the upstream side of each connection.\n")
    L.append("| target | connections | RSS before (KiB) | RSS after (KiB) | KiB/connection |")
    L.append("| --- | --- | --- | --- | --- |")
    for t in TARGETS:
        r = d.idle.get(t)
        if r:
            fail = f" ({r['failed']} failed)" if r.get("failed") else ""
            L.append(f"| {t} | {r['opened']}{fail} | {r['rss_before_kib']} | {r['rss_after_kib']} | "
                     f"{r['kib_per_conn']:.2f} |")
    L.append("")

    if d.errors:
        L.append("## Runs that failed\n")
        for e in d.errors:
            L.append(f"- {e['phase']} {e['target']} {size_label(e['size'])} round {e['round']}: "
                     f"{escape(e['error'])}")
        L.append("")
    L.append("Raw results: `results.jsonl` (one JSON line per run); configs and logs of every "
             "program: `logs/`. How to read this: tests/bench/README.md.\n")
    return "\n".join(L)


def nice_max(x):
    if x <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(x))
    for f in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if f * e >= x:
            return f * e
    return 10 * e


def svg_chart(d, among, title):
    sizes = d.sizes
    targets = [t for t in d.targets if t in among]
    cols = 2 if len(sizes) > 1 else 1
    rows = math.ceil(len(sizes) / cols)
    pw, ph = 470, 300  # panel
    ml, mt, mb = 60, 40, 70
    legend_h = 30
    W = cols * pw + 50
    H = rows * ph + legend_h + 40
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
         f'{escape(title)}: echoed messages per second (median, whiskers min–max)'
         f'{" — QUICK run, not figures" if d.meta.get("quick") == "1" else ""}</text>']
    for i, s in enumerate(sizes):
        px = 10 + (i % cols) * pw
        py = 30 + (i // cols) * ph
        vals = {t: d.tp_values(t, s) for t in targets}
        top = nice_max(max([max(v) for v in vals.values() if v] or [1]))
        x0, y0 = px + ml, py + mt
        w, h = pw - ml - 15, ph - mt - mb
        o.append(f'<text x="{px + pw / 2}" y="{py + 25}" text-anchor="middle" font-size="13" '
                 f'font-weight="bold">{escape(size_label(s))}</text>')
        for k in range(6):
            v = top * k / 5
            y = y0 + h - h * k / 5
            o.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
            o.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{fmt_rate(v)}</text>')
        o.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 + h}" stroke="#333"/>')
        o.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#333"/>')
        n = max(len(targets), 1)
        slot = w / n
        bw = slot * 0.7
        for j, t in enumerate(targets):
            v = vals[t]
            cx = x0 + slot * j + slot / 2
            if v:
                mv = med(v)
                bh = h * mv / top
                o.append(f'<rect x="{cx - bw / 2:.1f}" y="{y0 + h - bh:.1f}" width="{bw:.1f}" '
                         f'height="{bh:.1f}" fill="{COLORS.get(t, "#999")}"><title>{escape(t)}: '
                         f'{mv:.0f} msgs/s</title></rect>')
                lo, hi = y0 + h - h * min(v) / top, y0 + h - h * max(v) / top
                o.append(f'<line x1="{cx:.1f}" y1="{lo:.1f}" x2="{cx:.1f}" y2="{hi:.1f}" stroke="#000"/>')
                for yy in (lo, hi):
                    o.append(f'<line x1="{cx - 4:.1f}" y1="{yy:.1f}" x2="{cx + 4:.1f}" y2="{yy:.1f}" '
                             f'stroke="#000"/>')
                o.append(f'<text x="{cx:.1f}" y="{min(hi, y0 + h - bh) - 4:.1f}" text-anchor="middle" '
                         f'font-size="9">{fmt_rate(mv)}</text>')
            else:
                o.append(f'<text x="{cx:.1f}" y="{y0 + h - 5}" text-anchor="middle" font-size="9" '
                         f'fill="#999">n/a</text>')
            o.append(f'<text transform="translate({cx:.1f},{y0 + h + 8}) rotate(40)" '
                     f'font-size="10">{escape(t)}</text>')
    ly = 30 + rows * ph + 15
    lx = 20
    for t in among:
        o.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{COLORS[t]}"/>')
        o.append(f'<text x="{lx + 16}" y="{ly}">{escape(t)}'
                 f'{"" if d.avail(t) else " (not available)"}</text>')
        lx += 16 + 7 * len(t) + (100 if not d.avail(t) else 18)
        if lx > W - 120:
            lx = 20
            ly += 18
    o.append("</svg>")
    return "\n".join(o)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    d = Data(load_results(a.results), load_meta(a.meta))
    with open(f"{a.out}/report.md", "w") as f:
        f.write(report_md(d))
    with open(f"{a.out}/throughput.svg", "w") as f:
        f.write(svg_chart(d, PLAIN_TARGETS, "ws://"))
    if d.started("direct+tls"):
        with open(f"{a.out}/throughput-tls.svg", "w") as f:
            f.write(svg_chart(d, TLS_TARGETS, "wss:// (TLS)"))


if __name__ == "__main__":
    main()
