#!/usr/bin/env python3
"""Turns a golden cases.json into one line per case for the C test (which has no JSON parser):
name dtype n steps alpha eps weight_decay momentum centered maximize tol_f32 tol_f64
file_params0 file_grads file_params file_square_avg file_grad_avg|- file_momentum|-
semantics eps_in_sqrt nesterov bias_correction initial_scale lr...

semantics: 0 PyTorch, 1 optax, 2 Keras (from the case's `framework`; its `options` use the
library's own argument names and are mapped here to this crate's).
"""
import json, sys

m = json.load(open(sys.argv[1]))
tol = m["tolerance"]
for c in m["cases"]:
    f = c["files"]
    framework = c.get("framework", "torch").split()[0]
    o = c.get("options", {})
    none0 = lambda v: 0.0 if v is None else v
    if framework == "optax":
        hp = [o["decay"], o["eps"], 0.0, none0(o["momentum"]), o["centered"], False]
        extra = [1, int(o["eps_in_sqrt"]), int(o["nesterov"]), int(o["bias_correction"]), repr(o["initial_scale"])]
    elif framework == "keras":
        hp = [o["rho"], o["epsilon"], none0(o["weight_decay"]), none0(o["momentum"]), o["centered"], False]
        extra = [2, 0, 0, 0, repr(0.0)]
    else:
        hp = [c["alpha"], c["eps"], c["weight_decay"], c["momentum"], c["centered"], c["maximize"]]
        extra = [0, 0, 0, 0, repr(0.0)]
    fields = [c["name"], c["dtype"], c["n"], c["steps"], repr(float(hp[0])), repr(float(hp[1])),
              repr(float(hp[2])), repr(float(hp[3])), int(hp[4]), int(hp[5]),
              repr(tol["f32"]), repr(tol["f64"]), f["params0"], f["grads"], f["params"], f["square_avg"],
              f.get("grad_avg", "-"), f.get("momentum_buffer", "-")] + extra + [repr(x) for x in c["lr"]]
    print(" ".join(str(x) for x in fields))
