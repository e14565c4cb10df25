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
    """Mirror of `RmspropHyperparameters` in capi/include/rmsprop_simd.h (C ABI v1)."""

    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("version", ctypes.c_uint32),
        ("lr", ctypes.c_double),
        ("alpha", ctypes.c_double),
        ("eps", ctypes.c_double),
        ("weight_decay", ctypes.c_double),
        ("momentum", ctypes.c_double),
        ("centered", ctypes.c_uint8),
        ("maximize", ctypes.c_uint8),
        ("semantics", ctypes.c_uint8),
        ("eps_in_sqrt", ctypes.c_uint8),
        ("nesterov", ctypes.c_uint8),
        ("bias_correction", ctypes.c_uint8),
        ("keras_lr_f32", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8 * 9),
        ("step", ctypes.c_uint64),
    ]


def load_library():
    path = os.environ.get("RMSPROP_SIMD_LIB", os.path.join(ROOT, "target", "capi", "librmsprop_simd.so"))
    lib = ctypes.CDLL(path)
    ctx_p = ctypes.c_void_p
    for dtype, ctype in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fn = getattr(lib, f"rmsprop_step_{dtype}")
        ptr = ctypes.POINTER(ctype)
        fn.argtypes = [ctx_p, ctypes.POINTER(Hyperparameters), ctypes.c_size_t, ptr, ptr, ptr, ptr, ptr]
        fn.restype = ctypes.c_int32
    lib.rmsprop_hyperparameters_init.argtypes = [ctypes.POINTER(Hyperparameters), ctypes.c_size_t]
    lib.rmsprop_hyperparameters_init.restype = ctypes.c_int32
    lib.rmsprop_context_create.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctx_p)]
    lib.rmsprop_context_create.restype = ctypes.c_int32
    lib.rmsprop_context_free.argtypes = [ctx_p]
    lib.rmsprop_context_last_error.argtypes = [ctx_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rmsprop_context_last_error.restype = ctypes.c_size_t
    lib.rmsprop_backend_detect.restype = ctypes.c_int32
    lib.rmsprop_abi_version.restype = ctypes.c_uint32
    if lib.rmsprop_abi_version() != 1:
        raise RuntimeError("this example speaks C ABI v1")
    return lib


class RMSprop:
    """A minimal wrapper over one context: one numpy buffer per call (the Python package,
    python/, is the real binding; this shows the C ABI from a foreign-function interface)."""

    def __init__(self, lib, **hyperparameters):
        self.lib = lib
        self.ctx = ctypes.c_void_p()
        code = lib.rmsprop_context_create(None, ctypes.byref(self.ctx))  # defaults: calling thread
        if code != 0:
            raise RuntimeError(f"rmsprop_context_create failed ({code})")
        self.hp = Hyperparameters()
        # PyTorch's defaults; the size keeps the library from writing past this mirror
        lib.rmsprop_hyperparameters_init(ctypes.byref(self.hp), ctypes.sizeof(self.hp))
        for key, value in hyperparameters.items():
            setattr(self.hp, key, value)

    def __del__(self):
        if getattr(self, "ctx", None):
            self.lib.rmsprop_context_free(self.ctx)

    def message(self):
        buf = ctypes.create_string_buffer(512)
        self.lib.rmsprop_context_last_error(self.ctx, buf, len(buf))
        return buf.value.decode()

    @staticmethod
    def _buffer(array, dtype, name, writable, n):
        """The pointer of a C-contiguous numpy array of `dtype` and length n, or NULL for None."""
        if array is None:
            return None
        if not isinstance(array, np.ndarray) or array.dtype != dtype:
            raise TypeError(f"{name} must be a numpy array of {dtype}")
        if not array.flags["C_CONTIGUOUS"] or (writable and not array.flags["WRITEABLE"]):
            raise ValueError(f"{name} must be C-contiguous" + (" and writable" if writable else ""))
        if array.size != n:
            raise ValueError(f"{name} has {array.size} elements, params has {n}")
        ctype = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        return array.ctypes.data_as(ctypes.POINTER(ctype))

    def step(self, params, grads, square_avg, grad_avg=None, momentum_buffer=None):
        dtype, n = params.dtype, params.size
        fn = {np.dtype(np.float32): self.lib.rmsprop_step_f32, np.dtype(np.float64): self.lib.rmsprop_step_f64}[dtype]
        args = [self._buffer(a, dtype, name, w, n) for name, a, w in (
            ("params", params, True), ("grads", grads, False), ("square_avg", square_avg, True),
            ("grad_avg", grad_avg, True), ("momentum_buffer", momentum_buffer, True))]
        code = fn(self.ctx, ctypes.byref(self.hp), n, *args)
        if code != 0:
            raise RuntimeError(f"rmsprop_step failed ({code}): {self.message()}")


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
        bad = RMSprop(lib, lr=-1.0, momentum=case["momentum"], centered=int(case["centered"]))
        bad.step(params, np.ascontiguousarray(grads[0]), state["square_avg"],
                 state["grad_avg"] if case["centered"] else None,
                 state["momentum_buffer"] if case["momentum"] > 0 else None)
        print("FAIL: a negative learning rate was accepted")
        failures += 1
    except RuntimeError as e:
        unchanged = np.array_equal(before, params)
        failures += not unchanged
        print(f"error reported as expected: {e}; params unchanged: {unchanged}")
    print(f"{1 if failures == 0 else 0} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
