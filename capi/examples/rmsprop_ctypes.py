#!/usr/bin/env python3
"""Calls rmsprop-simd's C API from Python with ctypes and numpy (no build step beyond cargo).

    cargo build -p rmsprop-simd-capi --profile capi
    python3 capi/examples/rmsprop_ctypes.py [GOLDEN_DIR] [CASE_NAME]

Runs one golden case (default: f32_wd1_c1_m1_max1 of tests/golden/torch-2.15, centered + momentum
+ weight decay + maximize) through `rmsprop_step`, checks it with the golden rule, shows an error
being reported, and exits non-zero on any mismatch.
"""
import ctypes
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Hyperparameters(ctypes.Structure):
    """Mirror of `RmspropHyperparameters` in include/rmsprop_simd.h."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("lr", ctypes.c_double),
        ("alpha", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("momentum", ctypes.c_double),
        ("centered", ctypes.c_uint8),
        ("maximize", ctypes.c_uint8),
    ]


def load_library():
    path = os.environ.get("RMSPROP_SIMD_LIB", os.path.join(ROOT, "target", "capi", "librmsprop_simd.so"))
    lib = ctypes.CDLL(path)
    for dtype, ctype in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fn = getattr(lib, f"rmsprop_step_{dtype}")
        ptr, n = ctypes.POINTER(ctype), ctypes.c_size_t
        fn.argtypes = [ctypes.POINTER(Hyperparameters), ptr, n, ptr, n, ptr, n, ptr, n, ptr, n]
        fn.restype = ctypes.c_int32
    lib.rmsprop_hyperparameters_init.argtypes = [ctypes.POINTER(Hyperparameters)]
    lib.rmsprop_hyperparameters_init.restype = ctypes.c_int32
    lib.rmsprop_last_error_message.restype = ctypes.c_char_p
    lib.rmsprop_backend_detect.restype = ctypes.c_int32
    lib.rmsprop_set_threads.argtypes = [ctypes.c_size_t]
    lib.rmsprop_set_threads.restype = ctypes.c_int32
    return lib


class RMSprop:
    """A minimal wrapper: one numpy (or, via data_ptr, torch) buffer per call."""

    def __init__(self, lib, **hyperparameters):
        self.lib = lib
        self.hp = Hyperparameters()
        lib.rmsprop_hyperparameters_init(ctypes.byref(self.hp))  # PyTorch's defaults
        for key, value in hyperparameters.items():
            setattr(self.hp, key, value)

    @staticmethod
    def _buffer(array, dtype, name, writable):
        """(pointer, length) of a C-contiguous numpy array of `dtype`, or (NULL, 0) for None."""
        if array is None:
            return None, 0
        if not isinstance(array, np.ndarray) or array.dtype != dtype:
            raise TypeError(f"{name} must be a numpy array of {dtype}")
        if not array.flags["C_CONTIGUOUS"] or (writable and not array.flags["WRITEABLE"]):
            raise ValueError(f"{name} must be C-contiguous" + (" and writable" if writable else ""))
        ctype = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        return array.ctypes.data_as(ctypes.POINTER(ctype)), array.size

    def step(self, params, grads, square_avg, grad_avg=None, momentum_buffer=None):
        dtype = params.dtype
        fn = {np.dtype(np.float32): self.lib.rmsprop_step_f32, np.dtype(np.float64): self.lib.rmsprop_step_f64}[dtype]
        args = []
        for name, array, writable in (("params", params, True), ("grads", grads, False), ("square_avg", square_avg, True),
                                      ("grad_avg", grad_avg, True), ("momentum_buffer", momentum_buffer, True)):
            args += self._buffer(array, dtype, name, writable)
        code = fn(ctypes.byref(self.hp), *args)
        if code != 0:
            raise RuntimeError(f"rmsprop_step failed ({code}): {self.lib.rmsprop_last_error_message().decode()}")


def relative_error(x, e, r, tiny):
    """The golden rule of tests/golden/README.md."""
    for bad in (np.isnan, np.isposinf, np.isneginf):
        if not np.array_equal(bad(x), bad(e)):
            return float("inf")
    fin = np.isfinite(e)
    if not fin.any():
        return 0.0
    scale = max(np.abs(e[fin].astype(np.float64) - r[fin]).max(), tiny)
    return float(np.abs(x[fin].astype(np.float64) - e[fin]).max() / scale)


def main():
    golden = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "golden", "torch-2.15")
    name = sys.argv[2] if len(sys.argv) > 2 else "f32_wd1_c1_m1_max1"
    lib = load_library()
    print(f"library loaded; detected backend {lib.rmsprop_backend_detect()}")
    meta = json.load(open(os.path.join(golden, "cases.json")))
    case = next(c for c in meta["cases"] if c["name"] == name)
    dtype = np.float32 if case["dtype"] == "f32" else np.float64
    load = lambda key: np.fromfile(os.path.join(golden, case["files"][key]), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    n, steps = case["n"], case["steps"]
    params0 = load("params0")
    grads = load("grads").reshape(steps, n)
    params = params0.copy()
    state = {k: np.zeros(n, dtype) for k in ("square_avg", "grad_avg", "momentum_buffer")}
    opt = RMSprop(lib, alpha=case["alpha"], eps=case["eps"], weight_decay=case["weight_decay"],
                  momentum=case["momentum"], centered=int(case["centered"]), maximize=int(case["maximize"]))
    for s, lr in enumerate(case["lr"]):
        opt.hp.lr = lr  # a schedule: change between steps
        opt.step(params, np.ascontiguousarray(grads[s]), state["square_avg"],
                 state["grad_avg"] if case["centered"] else None,
                 state["momentum_buffer"] if case["momentum"] > 0 else None)
    tol = meta["tolerance"][case["dtype"]]
    tiny = float(np.finfo(dtype).tiny)
    failures = 0
    for key, got in [("params", params)] + list(state.items()):
        if key not in case["files"]:
            continue
        start = params0 if key == "params" else np.zeros(n, dtype)
        err = relative_error(got, load(key), start, tiny)
        ok = err <= tol
        failures += not ok
        print(f"{name} {key}: relative error {err:.2e} (tolerance {tol:g}) {'PASS' if ok else 'FAIL'}")

    # Errors come back as exceptions carrying the library's message; nothing is written.
    before = params.copy()
    try:
        opt.step(params, np.ascontiguousarray(grads[0][:-1]), state["square_avg"], state["grad_avg"], state["momentum_buffer"])
        print("FAIL: a length mismatch was accepted")
        failures += 1
    except RuntimeError as e:
        unchanged = np.array_equal(before, params)
        failures += not unchanged
        print(f"error reported as expected: {e}; params unchanged: {unchanged}")
    print(f"{1 if failures == 0 else 0} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
