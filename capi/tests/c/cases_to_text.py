#!/usr/bin/env python3
"""Turns a golden cases.json into one line per case for the C test (which has no JSON parser):
name dtype n steps alpha eps weight_decay momentum centered maximize has_grad_avg has_momentum
tol_f32 tol_f64 file_params0 file_grads file_params file_square_avg file_grad_avg|- file_momentum|- lr...
"""
import json, sys

m = json.load(open(sys.argv[1]))
tol = m["tolerance"]
for c in m["cases"]:
    f = c["files"]
    fields = [c["name"], c["dtype"], c["n"], c["steps"], repr(c["alpha"]), repr(c["eps"]),
              repr(c["weight_decay"]), repr(c["momentum"]), int(c["centered"]), int(c["maximize"]),
              repr(tol["f32"]), repr(tol["f64"]), f["params0"], f["grads"], f["params"], f["square_avg"],
              f.get("grad_avg", "-"), f.get("momentum_buffer", "-")] + [repr(x) for x in c["lr"]]
    print(" ".join(str(x) for x in fields))
