"""The numpy API: step / step_many in place, exact against a NumPy transcription of PyTorch's
operation order is not possible (no fma in NumPy), so against the golden rule of PyTorch's own
results elsewhere, and here: bitwise self-consistency, every error with nothing written."""

import subprocess
import sys

import numpy as np
import pytest

import rmsprop_simd


def arrays(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    v = np.abs(rng.standard_normal(n)).astype(dtype)
    ga = rng.standard_normal(n).astype(dtype) * 0.1
    b = rng.standard_normal(n).astype(dtype) * 0.1
    return p, g, v, ga, b


def test_import_does_not_import_torch():
    code = "import sys, rmsprop_simd; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_matches_the_plain_formula_without_rounding_traps(dtype):
    # plain RMSprop on values where every operation is exact in both types
    p = np.array([1.0, -2.0, 0.5, 0.0], dtype)
    g = np.array([2.0, -4.0, 0.5, 0.0], dtype)
    v = np.zeros(4, dtype)
    rmsprop_simd.step(p, g, v, lr=0.5, alpha=0.75, eps=0.0)
    np.testing.assert_array_equal(v, 0.25 * g * g)
    expected = np.array([1.0, -2.0, 0.5], dtype) - 0.5 * g[:3] / np.sqrt(0.25 * g[:3] ** 2)
    np.testing.assert_array_equal(p[:3], expected)
    assert np.isnan(p[3])  # 0 / 0, as PyTorch gives with eps = 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_many_equals_step_per_array_and_threads_do_not_matter(dtype):
    sizes = [0, 1, 7, 64, 1000, 300_000]
    hp = dict(lr=1e-2, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.9, centered=True, maximize=True)
    results = []
    for threads in (1, 2, 3, None):
        bufs = [arrays(n, dtype, seed=i) for i, n in enumerate(sizes)]
        rmsprop_simd.step_many(
            [b[0] for b in bufs], [b[1] for b in bufs], [b[2] for b in bufs],
            [b[3] for b in bufs], [b[4] for b in bufs], num_threads=threads, **hp)
        results.append(bufs)
    single = [arrays(n, dtype, seed=i) for i, n in enumerate(sizes)]
    for p, g, v, ga, b in single:
        rmsprop_simd.step(p, g, v, ga, b, num_threads=1, **hp)
    for bufs in results:
        for got, want in zip(bufs, single):
            for x, y in zip(got, want):
                np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))


def test_none_gradient_leaves_the_tensor_untouched():
    a, b = arrays(10, np.float32, 1), arrays(10, np.float32, 2)
    before = [x.copy() for x in b]
    rmsprop_simd.step_many([a[0], b[0]], [a[1], None], [a[2], b[2]], lr=0.1)
    for x, y in zip(b, before):
        np.testing.assert_array_equal(x, y)


def test_multidimensional_arrays_step_elementwise():
    p, g, v, _, _ = arrays(24, np.float64, 3)
    p2, g2, v2 = p.reshape(2, 3, 4).copy(), g.reshape(2, 3, 4).copy(), v.reshape(2, 3, 4).copy()
    rmsprop_simd.step(p, g, v, lr=0.1)
    rmsprop_simd.step(p2, g2, v2, lr=0.1)
    np.testing.assert_array_equal(p, p2.ravel())


def unchanged(bufs, before):
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(bufs, before))


@pytest.mark.parametrize(
    "make, exc, needle",
    [
        (lambda p, g, v, ga, b: dict(params=p.astype(np.float16), grads=g, square_avg=v), TypeError, "float32 or float64"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g.astype(np.float64), square_avg=v), TypeError, "grads"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v.astype(np.float64)), TypeError, "square_avg"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g[:-1], square_avg=v), ValueError, "grads"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v[:-1]), ValueError, "square_avg"),
        (lambda p, g, v, ga, b: dict(params=p[::2], grads=g[::2], square_avg=v[::2]), ValueError, "C-contiguous"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=p), ValueError, "square_avg"),
        (lambda p, g, v, ga, b: dict(params=p, grads=p, square_avg=v), ValueError, "grads"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v, grad_avg=ga), ValueError, "centered"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v, centered=True), ValueError, "grad_avg"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v, momentum=0.9), ValueError, "momentum_buffer"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v, momentum_buffer=b), ValueError, "momentum"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v, alpha=float("nan")), ValueError, "alpha"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v, eps=-1.0), ValueError, "eps"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v, weight_decay=1e300), ValueError, "weight_decay"),
        (lambda p, g, v, ga, b: dict(params=[1.0, 2.0], grads=g, square_avg=v), TypeError, "params"),
        (lambda p, g, v, ga, b: dict(params=p, grads=g, square_avg=v, num_threads=0), ValueError, "num_threads"),
    ],
)
def test_errors_raise_and_write_nothing(make, exc, needle):
    p, g, v, ga, b = arrays(50, np.float32, 4)
    before = [x.copy() for x in (p, g, v, ga, b)]
    kwargs = make(p, g, v, ga, b)
    kwargs.setdefault("lr", 0.01)
    with pytest.raises(exc, match=needle):
        rmsprop_simd.step(**kwargs)
    assert unchanged((p, g, v, ga, b), before)


def test_read_only_arrays_are_refused_and_nothing_written():
    p, g, v, _, _ = arrays(20, np.float64, 5)
    p.setflags(write=False)
    before = v.copy()
    with pytest.raises(ValueError, match="params cannot be written"):
        rmsprop_simd.step(p, g, v, lr=0.1)
    np.testing.assert_array_equal(v, before)
    # a read-only gradient is fine: it is only read
    p.setflags(write=True)
    g.setflags(write=False)
    rmsprop_simd.step(p, g, v, lr=0.1)


def test_step_many_errors_name_the_tensor_and_write_nothing():
    a, b = arrays(30, np.float32, 6), arrays(30, np.float32, 7)
    before = [x.copy() for x in a + b]
    with pytest.raises(ValueError, match="tensor 1: length mismatch: square_avg"):
        rmsprop_simd.step_many([a[0], b[0]], [a[1], b[1]], [a[2], b[2][:5]], lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        rmsprop_simd.step_many([a[0], b[0]], [a[1], b[1].astype(np.float64)], [a[2], b[2]], lr=0.1)
    with pytest.raises(ValueError, match="square_avgs has 1 entries"):
        rmsprop_simd.step_many([a[0], b[0]], [a[1], b[1]], [a[2]], lr=0.1)
    # the same array as the params of two tensors
    with pytest.raises(ValueError, match=r"params\[1\]"):
        rmsprop_simd.step_many([a[0], a[0]], [a[1], b[1]], [a[2], b[2]], lr=0.1)
    assert unchanged(a + b, before)


def test_hyperparameter_check():
    rmsprop_simd.check_hyperparameters("float32", lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        rmsprop_simd.check_hyperparameters("float32", lr=1e300)
    rmsprop_simd.check_hyperparameters("float64", lr=1e300)


GOLDEN = __import__("pathlib").Path(__file__).resolve().parents[2] / "tests" / "golden"


def golden_cases(name):
    import json

    meta = json.loads((GOLDEN / name / "cases.json").read_text())
    return [(meta["tolerance"], c) for c in meta["cases"]]


@pytest.mark.parametrize("tolerance, case", golden_cases("optax-0.2.8-keras-3.15"),
                         ids=[c["name"] for _, c in golden_cases("optax-0.2.8-keras-3.15")])
def test_optax_and_keras_golden_sets_through_the_numpy_api(tolerance, case):
    from conftest import rule_error

    dtype = np.float32 if case["dtype"] == "f32" else np.float64
    load = lambda key: np.fromfile(GOLDEN / "optax-0.2.8-keras-3.15" / case["files"][key], dtype="<" + np.dtype(dtype).str[1:]).astype(dtype)
    n, o = case["n"], case["options"]
    framework = case["framework"].split()[0]
    if framework == "optax":
        kw = dict(semantics="optax", alpha=o["decay"], eps=o["eps"], centered=o["centered"],
                  momentum=o["momentum"] or 0.0, eps_in_sqrt=o["eps_in_sqrt"], nesterov=o["nesterov"],
                  bias_correction=o["bias_correction"])
        v0 = o["initial_scale"]
    else:
        kw = dict(semantics="keras", alpha=o["rho"], eps=o["epsilon"], centered=o["centered"],
                  momentum=o["momentum"] or 0.0, weight_decay=o["weight_decay"] or 0.0)
        v0 = 0.0
    p0 = load("params0")
    grads = load("grads").reshape(case["steps"], n)
    p = p0.copy()
    v = np.full(n, v0, dtype)
    ga = np.zeros(n, dtype) if kw["centered"] else None
    b = np.zeros(n, dtype) if kw["momentum"] > 0 else None
    for s, lr in enumerate(case["lr"]):
        rmsprop_simd.step(p, np.ascontiguousarray(grads[s]), v, ga, b, lr=lr, step=s + 1, **kw)
    tol = tolerance[case["dtype"]]
    for key, got, start in (("params", p, p0), ("square_avg", v, np.full(n, v0, dtype)),
                            ("grad_avg", ga, np.zeros(n, dtype)), ("momentum_buffer", b, np.zeros(n, dtype))):
        if key in case["files"]:
            err = rule_error(got, load(key), start)
            assert err <= tol, f"{case['name']} {key}: {err:.3g} > {tol}"
