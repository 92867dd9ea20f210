#!/usr/bin/python3
"""The PyTorch side of bench/bench_ops.c: the same shapes (read from `build/bench_ops --shapes`
on stdin), the same passes, the same timing rule (median of >= 5 runs and >= 1 s after two
warm-up runs), printed in the same TSV format:  op  name  pass  ms.

Run with Debian's Python (torch 1.13 built with oneDNN, BLAS through libblas.so.3):
    build/bench_ops --shapes | /usr/bin/python3 bench/bench_ops_torch.py [THREADS] [FILTER]
"""
import os
import sys
import time

import torch
import torch.nn.functional as F


# BENCH_CLOCK=cpu: process CPU time, as bench_ops.c (for single-threaded runs on a busy machine)
clock = time.process_time if os.environ.get("BENCH_CLOCK") == "cpu" else time.perf_counter


def time_pass(fn, xs, pass_):
    x, w = xs
    x.requires_grad_(pass_ >= 1)
    w.requires_grad_(pass_ >= 2)
    y = fn(x, w)
    seed = (torch.arange(y.numel(), dtype=torch.float32) % 7 * 1e-3).reshape(y.shape)
    ts = []
    i = -2
    while len(ts) < 64 and (len(ts) < 5 or sum(ts) < 1.0):
        x.grad = None
        w.grad = None
        t0 = clock()
        if pass_ == 0:
            with torch.no_grad():
                y = fn(x, w)
        else:
            y = fn(x, w)
            y.backward(seed)
        dt = clock() - t0
        if i >= 0:
            ts.append(dt)
        i += 1
    ts.sort()
    return ts[len(ts) // 2]


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    filt = sys.argv[2] if len(sys.argv) > 2 else None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    passes = ("fwd", "fwd+dx", "fwd+dx+dw")
    for line in sys.stdin:
        f = line.split()
        if not f:
            continue
        op, name = f[0], f[1]
        if filt and filt not in name:
            continue
        if op == "conv":
            n, c, h, w_, o, k, s, p, g, tr = map(int, f[2:])
            x = torch.rand(n, c, h, w_) - 0.5
            if tr:
                w = torch.rand(c, o // g, k, k) - 0.5
                fn = lambda x, w, s=s, p=p, g=g: F.conv_transpose2d(x, w, stride=s, padding=p, groups=g)
            else:
                w = torch.rand(o, c // g, k, k) - 0.5
                fn = lambda x, w, s=s, p=p, g=g: F.conv2d(x, w, stride=s, padding=p, groups=g)
        elif op == "matmul":
            m, k, n = map(int, f[2:])
            x = torch.rand(m, k) - 0.5
            w = torch.rand(k, n) - 0.5
            fn = torch.matmul
        else:
            continue
        for pi, pn in enumerate(passes):
            ms = 1e3 * time_pass(fn, (x, w), pi)
            print("%s\t%s\t%s\t%.3f" % (op, name, pn, ms), flush=True)


if __name__ == "__main__":
    main()
