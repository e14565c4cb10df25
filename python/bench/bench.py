#!/usr/bin/env python3
"""One RMSprop step, measured in one run (interleaved rounds, best round of each), on:
one 1e7-element f32 tensor, and the ResNet-50 and GPT-2 small parameter lists
(support/models/*.txt), with 1 thread and with every thread, for

- torch.optim.RMSprop(foreach=False) and (foreach=True),
- rmsprop_simd.torch.RMSprop (this package: one call into Rust per parameter group),
- optax.rmsprop under jax.jit, when optax is installed (else the row says so),
- the Rust kernel on one contiguous buffer of the same total size (rmsprop_simd.step), the
  throughput the package should reach on a model list ("Python invisible").

    python python/bench/bench.py            # everything
    python python/bench/bench.py --quick    # a 1e6-element tensor only (CI)
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

import rmsprop_simd
from rmsprop_simd.torch import RMSprop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shapes(name):
    out = []
    with open(os.path.join(ROOT, "support", "models", f"{name}.txt")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            out.append(tuple(int(d) for d in line.split()[1].split("x")))
    return out


def best_of(fns, rounds):
    """Seconds per call of each fn: best of `rounds`, interleaved (one call of each per round)."""
    best = [float("inf")] * len(fns)
    for f in fns:
        f()  # warm up: state allocation, page faults, jit
    for _ in range(rounds):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def optax_step(params_np, grads_np):
    try:
        import jax
        import optax
    except ImportError:
        return None
    opt = optax.rmsprop(1e-3)
    params = [jax.numpy.asarray(p) for p in params_np]
    grads = [jax.numpy.asarray(g) for g in grads_np]
    state = [opt.init(params)]

    @jax.jit
    def update(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    box = [params]

    def run():
        box[0], state[0] = update(box[0], state[0], grads)
        jax.block_until_ready(box[0])

    return run


def measure(label, shape_list, threads, rounds):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.rand(s, generator=gen) * 0.1 + 0.01) for s in shape_list]
    for p in params:
        p.grad = torch.rand(p.shape, generator=gen) * 1e-2 + 1e-4  # never 0: no subnormal drift
    total = sum(p.numel() for p in params)
    torch.set_num_threads(threads)
    opts = {
        "torch foreach=False": torch.optim.RMSprop(params, lr=1e-3, foreach=False),
        "torch foreach=True": torch.optim.RMSprop(params, lr=1e-3, foreach=True),
        "rmsprop_simd": RMSprop(params, lr=1e-3, num_threads=threads),
    }
    flat_p = np.full(total, 0.05, np.float32)
    flat_g = np.full(total, 1e-3, np.float32)
    flat_v = np.zeros(total, np.float32)
    fns = [o.step for o in opts.values()]
    names = list(opts)
    fns.append(lambda: rmsprop_simd.step(flat_p, flat_g, flat_v, lr=1e-3, num_threads=threads))
    names.append("Rust kernel, one contiguous buffer")
    ox = optax_step([p.detach().numpy().copy() for p in params], [p.grad.numpy().copy() for p in params])
    if ox is not None:
        fns.append(ox)
        names.append("optax (jit)")
    secs = best_of(fns, rounds)
    res = dict(zip(names, secs))
    torch_best = min(res["torch foreach=False"], res["torch foreach=True"])
    ours = res["rmsprop_simd"]
    print(f"\n{label}: {len(shape_list)} tensors, {total / 1e6:.1f}M elements, {threads} thread(s)")
    for n in names:
        print(f"  {n:<36} {res[n] * 1e3:9.2f} ms  {res[n] / total * 1e9:6.2f} ns/element")
    if ox is None:
        print("  optax (jit)                           not installed: not measured")
    print(f"  rmsprop_simd vs torch's faster path:  {torch_best / ours:.2f}x")
    print(f"  rmsprop_simd vs contiguous Rust:      {res['Rust kernel, one contiguous buffer'] / ours:.2f} "
          f"(1.00 = Python invisible)")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 1e6-element tensor only")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    all_threads = os.cpu_count() or 1
    print(f"rmsprop_simd {rmsprop_simd.__version__} ({rmsprop_simd.backend()}), torch {torch.__version__}, "
          f"{all_threads} CPUs")
    if args.quick:
        measure("one 1e6 tensor", [(1_000_000,)], 1, 2)
        return 0
    for threads in sorted({1, all_threads}):
        measure("one 1e7 tensor", [(10_000_000,)], threads, args.rounds)
        measure("ResNet-50", shapes("resnet50"), threads, args.rounds)
        measure("GPT-2 small", shapes("gpt2-small"), threads, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
