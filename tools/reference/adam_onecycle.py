#!/usr/bin/python3
"""Reference trajectories of torch.optim.Adam driven by torch.optim.lr_scheduler.OneCycleLR,
read by tests/test_optim.c.

Run with Debian's Python (torch 1.13):  /usr/bin/python3 tools/reference/adam_onecycle.py
Output: tests/fixtures/optim/adam_onecycle_*.txt (a few kB each). Deterministic.

The problem is a fixed diagonal quadratic, f(p) = 1/2 sum a_i (p_i - c_i)^2, whose gradient
a * (p - c) is computed in float32 by both sides (one subtraction and one multiplication per
element, so both get the same bits). The loop is the reference's optimize_sgd: step, then
scheduler.step().

File format (whitespace separated, '#' lines are comments):
    n N
    steps T
    config max_lr pct_start anneal(cos|linear) three_phase(0|1) weight_decay
    a a_0 ... a_{n-1}
    c c_0 ... c_{n-1}
    p0 p_0 ... p_{n-1}
    then T lines: step t (1-based), lr and beta1 used by that step, parameters after it.
Floats are printed with enough digits to round-trip (float32: 9, float64: 17).
"""
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "optim")

CASES = [
    # name, n, steps, max_lr, pct_start, anneal, three_phase, weight_decay
    ("default", 16, 100, 0.01, 0.3, "cos", False, 0.0),  # the painting schedule
    ("variants", 16, 50, 0.05, 0.25, "linear", True, 0.01),
]


def f32(x):
    return "%.9g" % float(np.float32(x))


def run(name, n, steps, max_lr, pct_start, anneal, three_phase, weight_decay):
    rng = np.random.RandomState(5)
    a = rng.uniform(0.5, 4.0, n).astype(np.float32)
    c = rng.uniform(-2.0, 2.0, n).astype(np.float32)
    p0 = rng.uniform(-1.0, 1.0, n).astype(np.float32)
    a_t, c_t = torch.from_numpy(a), torch.from_numpy(c)
    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([p], lr=max_lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr, total_steps=steps, pct_start=pct_start, anneal_strategy=anneal,
        three_phase=three_phase)
    lines = [
        "# torch %s: Adam + OneCycleLR on 1/2 sum a (p - c)^2" % torch.__version__,
        "n %d" % n,
        "steps %d" % steps,
        "config %.17g %.17g %s %d %.17g" % (max_lr, pct_start, anneal, int(three_phase),
                                            weight_decay),
        "a " + " ".join(f32(v) for v in a),
        "c " + " ".join(f32(v) for v in c),
        "p0 " + " ".join(f32(v) for v in p0),
    ]
    for t in range(steps):
        group = opt.param_groups[0]
        lr, beta1 = group["lr"], group["betas"][0]
        opt.zero_grad()
        with torch.no_grad():
            p.grad = a_t * (p.detach() - c_t)
        opt.step()
        sched.step()
        lines.append("%d %.17g %.17g " % (t + 1, lr, beta1) +
                     " ".join(f32(v) for v in p.detach().numpy()))
    path = os.path.join(OUT, "adam_onecycle_%s.txt" % name)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("wrote", os.path.relpath(path))


def main():
    os.makedirs(OUT, exist_ok=True)
    for case in CASES:
        run(*case)


if __name__ == "__main__":
    main()
