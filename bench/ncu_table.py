#!/usr/bin/env python3
"""ncu_table.py: Nsight Compute's text report (its default output, any sections) summed by
kernel: launches, total and mean duration, and the duration-weighted throughput of L1/TEX, L2,
DRAM and the SMs (% of peak), achieved occupancy, and which unit is nearest its peak. Sorted by
total time, as a Markdown table on stdout. Used by bench/ncu_sweep.sh; any python3.

    python3 bench/ncu_table.py REPORT.txt [TITLE]
"""
import re
import sys

# a kernel's header: "  NAME(ARGS) (GX, GY, GZ)x(BX, BY, BZ), Context C, Stream S, Device D, CC X.Y"
HEADER = re.compile(r"^  (\S.*) \((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\), Context \d+")
UNITS = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6,
         "second": 1e6, "nsecond": 1e-3}
METRICS = {"Duration": "dur", "L1/TEX Cache Throughput": "l1", "L2 Cache Throughput": "l2",
           "DRAM Throughput": "dram", "Compute (SM) Throughput": "sm",
           "Achieved Occupancy": "occ"}


def kernel_name(text):
    """The kernel's name without its parameter list (the last balanced parentheses) and
    without a leading 'void '."""
    s = text.rstrip()
    if s.endswith(")"):
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                s = s[:i]
                break
    return s[5:] if s.startswith("void ") else s


def parse(lines):
    """Each launch's name and metrics (a dict), in report order."""
    launches, cur = [], None
    for line in lines:
        m = HEADER.match(line)
        if m:
            cur = {"name": kernel_name(m.group(1))}
            launches.append(cur)
            continue
        if cur is None:
            continue
        parts = line.split()
        for label, key in METRICS.items():
            if line.strip().startswith(label) and key not in cur and len(parts) >= 2:
                try:
                    value = float(parts[-1].replace(",", ""))
                except ValueError:
                    break
                if key == "dur":
                    unit = parts[-2]
                    if unit not in UNITS:
                        break
                    value *= UNITS[unit]
                cur[key] = value
                break
    return [k for k in launches if "dur" in k]


def table(launches, title):
    by = {}
    for k in launches:
        by.setdefault(k["name"], []).append(k)
    total = sum(k["dur"] for k in launches)
    out = ["%s: %d launches, %.1f us in all (ncu's serialized durations)\n" %
           (title, len(launches), total),
           "| us | % | launches | us each | L1/TEX % | L2 % | DRAM % | SM % | occupancy % | "
           "nearest its peak | kernel |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for name, ks in by.items():
        t = sum(k["dur"] for k in ks)
        avg = {}
        for key in ("l1", "l2", "dram", "sm", "occ"):
            have = [k for k in ks if key in k]
            w = sum(k["dur"] for k in have)
            avg[key] = sum(k[key] * k["dur"] for k in have) / w if w > 0 else float("nan")
        units = [(avg[u], label) for u, label in
                 (("l1", "L1/TEX"), ("l2", "L2"), ("dram", "DRAM"), ("sm", "SM"))
                 if avg[u] == avg[u]]
        bound = max(units)[1] if units else "?"
        rows.append((t, len(ks), avg, bound, name))
    rows.sort(key=lambda r: -r[0])
    for t, n, avg, bound, name in rows:
        short = name if len(name) <= 110 else name[:107] + "..."
        out.append("| %.1f | %.1f | %d | %.1f | %.0f | %.0f | %.0f | %.0f | %.0f | %s | `%s` |" %
                   (t, 100.0 * t / total if total else 0.0, n, t / n, avg["l1"], avg["l2"],
                    avg["dram"], avg["sm"], avg["occ"], bound, short))
    return "\n".join(out)


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(sys.argv) >= 2 else 2
    with open(sys.argv[1], errors="replace") as f:
        launches = parse(f)
    if not launches:
        print("ncu_table.py: no kernel with a duration in %s" % sys.argv[1], file=sys.stderr)
        return 1
    print(table(launches, sys.argv[2] if len(sys.argv) > 2 else sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
