"""Shared helpers: the golden comparison rule of the project (tests/golden/README.md)."""

import math

import numpy as np
import pytest

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def rule_error(x, e, r):
    """max|x - e| / max(max|e - r|, tiny) over finite positions; inf if the NaN / +Inf / -Inf
    positions differ. x, e, r: numpy arrays of one real dtype (complex: compare view_as_real)."""
    x, e, r = (np.asarray(a) for a in (x, e, r))
    for bad in (np.isnan, np.isposinf, np.isneginf):
        if not np.array_equal(bad(x), bad(e)):
            return math.inf
    fin = np.isfinite(e)
    if not fin.any():
        return 0.0
    tiny = float(np.finfo(e.dtype).tiny)
    e64, x64, r64 = e[fin].astype(np.float64), x[fin].astype(np.float64), r[fin].astype(np.float64)
    scale = max(float(np.abs(e64 - r64).max()), tiny)
    return float(np.abs(x64 - e64).max()) / scale


def assert_rule(x, e, r, what):
    x, e, r = (np.asarray(a) for a in (x, e, r))
    err = rule_error(x, e, r)
    tol = TOLERANCE[e.dtype]
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(1234)
