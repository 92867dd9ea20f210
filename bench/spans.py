#!/usr/bin/env python3
"""spans.py: where a stream's time goes, from PBW_PROFILE_SPANS's timeline (any python3).

  PBW_PROFILE=gpu PBW_PROFILE_SPANS=spans.tsv pbw edit ...   (see bench/profile_cuda.sh)
  bench/spans.py spans.tsv [--report K] [--steps N] [--top 40] [--idle]

Reads the K-th report of the file (default the last: the edit's last phase), takes its busiest
stream as the critical lane and charges each of its spans with what it added to that lane's
time: its end minus the later of the previous span's end and its own start, plus the idle gap
before it where there is one. Summed over the lane, these charges are the lane's whole time, so
the table says which kernels (and, with CUDA graphs off, which ops) that time went to, and how
much of it the lane waited (for the other lanes or the host). Times are per step where --steps
says how many steps the report covers.

With CUDA graphs on (bench/profile_cuda.sh GRAPHS=1 PDL=1) a graph's branches run on streams of
the runtime's choosing and the critical path moves between them, so the busiest stream's idle
time says little. --idle then adds the time no stream ran anything (the whole GPU idle), by the
span that ended each gap: where a graph node held up the next (a memset node before a library
kernel, a copy) rather than a lane waiting for another.
"""
import argparse
import collections
import signal
import sys


def read_reports(path):
    reports, cur = [], None
    with open(path) as f:
        for line in f:
            if line.startswith("# report"):
                cur = []
                reports.append(cur)
                continue
            if cur is None or not line.strip():
                continue
            p = line.rstrip("\n").split("\t")
            if len(p) < 6:
                sys.exit(f"spans.py: {path}: a row with {len(p)} fields, not 6: {line[:80]!r}")
            cur.append((int(p[0]), int(p[1]), p[2], p[3], p[4], p[5]))
    return reports


def short(name, n=90):
    return name if len(name) <= n else name[: n - 3] + "..."


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the output quietly
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file")
    ap.add_argument("--report", type=int, default=-1, help="which report (0-based; -1 the last)")
    ap.add_argument("--steps", type=float, default=1, help="steps the report covers (divides)")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--idle", action="store_true", help="also the GPU's idle time, all streams")
    a = ap.parse_args()
    reports = read_reports(a.file)
    if not reports:
        sys.exit(f"spans.py: {a.file}: no '# report' in it")
    rows = reports[a.report]
    per = 1e-3 / a.steps  # ns -> us a step
    busy = collections.Counter()
    count = collections.Counter()
    for s, e, st, *_ in rows:
        busy[st] += e - s
        count[st] += 1
    print(f"report {a.report % len(reports)} of {len(reports)}: {len(rows)} spans, "
          f"{(max(r[1] for r in rows) - min(r[0] for r in rows)) * per:.1f} us a step")
    for st, b in busy.most_common():
        print(f"  stream {st}: {count[st] / a.steps:.0f} spans, {b * per:.1f} us of spans a step")
    lane = busy.most_common(1)[0][0]
    seq = sorted((r for r in rows if r[2] == lane), key=lambda r: (r[1], r[0]))
    charge_k = collections.Counter()
    charge_o = collections.Counter()
    n_k = collections.Counter()
    idle = 0
    idle_after = collections.Counter()
    prev_end, prev_name = seq[0][0], None
    for s, e, _, op, ps, name in seq:
        gap = max(0, s - prev_end)
        if gap > 0:
            idle += gap
            idle_after[short(prev_name or "(start)", 60)] += gap
        c = e - max(prev_end, s)
        if c < 0:
            c = 0
        charge_k[name] += c
        n_k[name] += 1
        charge_o[f"{op} {ps}"] += c
        prev_end, prev_name = max(prev_end, e), name
    total = sum(charge_k.values()) + idle
    print(f"stream {lane}: {total * per:.1f} us a step, of it idle {idle * per:.1f} us "
          f"({len(seq) / a.steps:.0f} spans a step)")
    print(f"\n{'us/step':>9} {'n/step':>7} {'us each':>8}  kernel (charged to the lane)")
    for name, c in charge_k.most_common(a.top):
        print(f"{c * per:9.1f} {n_k[name] / a.steps:7.1f} {c * 1e-3 / n_k[name]:8.2f}  {short(name)}")
    if len(charge_o) > 1:
        print(f"\n{'us/step':>9}  op (charged to the lane)")
        for name, c in charge_o.most_common(a.top):
            print(f"{c * per:9.1f}  {name}")
    print(f"\n{'us/step':>9}  idle after")
    for name, c in idle_after.most_common(12):
        print(f"{c * per:9.1f}  {name}")
    if a.idle:
        all_idle(rows, per, a.top)


def all_idle(rows, per, top):
    """The gaps in which no stream ran a span, by the span that ended each."""
    gaps = collections.Counter()
    n = collections.Counter()
    total = 0
    end = None
    for s, e, _, _, _, name in sorted(rows):
        if end is not None and s > end:
            key = short(name, 70)
            gaps[key] += s - end
            n[key] += 1
            total += s - end
        end = e if end is None else max(end, e)
    print(f"\nall streams idle: {total * per:.1f} us a step")
    print(f"{'us/step':>9} {'n/step':>7}  the span after the gap")
    for name, c in gaps.most_common(top):
        print(f"{c * per:9.1f} {n[name] * per * 1e3:7.1f}  {name}")


if __name__ == "__main__":
    main()
