"""16-bit storage from Python: the torch drop-in with bfloat16 / float16 parameters, and
``rmsprop_simd.step_mixed`` (f32 master weights with bfloat16 gradients and a bfloat16 copy),
checked against real torch.optim.RMSprop in float32."""

import numpy as np
import pytest
import torch

import rmsprop_simd
from rmsprop_simd.torch import RMSprop

HALF = [torch.bfloat16, torch.float16]


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in units in the last place between two 16-bit tensors of finite values (through
    the ordered integer view of the bits)."""
    def ordered(t):
        i = t.view(torch.int16).to(torch.int32)
        return torch.where(i < 0, -32768 - i, i)
    return (ordered(a) - ordered(b)).abs()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("config", [
    dict(),
    dict(momentum=0.9, centered=True, weight_decay=0.01),
    dict(maximize=True, alpha=0.9, eps=1e-6),
])
def test_half_params_equal_torch_float32_step_rounded(dtype, config):
    """Each step equals torch's float32 step from the widened 16-bit values, rounded once to the
    parameter's dtype: exact except where torch's float32 sqrt (not correctly rounded) moves a
    value across a rounding boundary, then by one ulp."""
    torch.manual_seed(3)
    n = 4099
    p = torch.nn.Parameter((torch.randn(n) * 0.5).to(dtype))
    opt = RMSprop([p], lr=1e-2, **config)
    exact = total = 0
    for step in range(6):
        p.grad = torch.randn(n).to(dtype)
        # torch in float32 from our 16-bit state
        q = torch.nn.Parameter(p.detach().float().clone())
        q.grad = p.grad.float()
        ref = torch.optim.RMSprop([q], lr=1e-2, **config)
        if step > 0:
            st = opt.state[p]
            ref.state[q] = {k: (v.float().clone() if k != "step" else v.clone()) for k, v in st.items()}
        opt.step()
        ref.step()
        assert opt.state[p]["square_avg"].dtype == dtype  # state in the parameter's dtype, as torch
        for ours, theirs in [(p.detach(), q.detach())] + [
                (opt.state[p][k], ref.state[q][k]) for k in ("square_avg", "grad_avg", "momentum_buffer")
                if k in opt.state[p]]:
            d = ulps(ours, theirs.to(dtype))
            assert int(d.max()) <= 1, f"step {step}: {int(d.max())} ulps"
            exact += int((d == 0).sum())
            total += d.numel()
        assert opt.state[p]["step"].item() == ref.state[q]["step"].item()
    assert exact >= 0.99 * total, f"only {exact} of {total} values exact"


def test_stochastic_rounding_keeps_updates_nearest_even_loses():
    """At a learning rate under half a bfloat16 ulp, nearest-even never moves a weight near 1 after
    the first steps; stochastic rounding moves it by the expected amount on average."""
    torch.manual_seed(0)
    n = 20000
    start = torch.ones(n, dtype=torch.bfloat16)
    moved = {}
    for sr in (False, True):
        p = torch.nn.Parameter(start.clone())
        opt = RMSprop([p], lr=1e-3, stochastic_rounding=sr, seed=5)
        for _ in range(200):
            p.grad = torch.ones(n, dtype=torch.bfloat16)
            opt.step()
        moved[sr] = float((start.float() - p.detach().float()).mean())
    # f32: square_avg -> 1 - 0.99^t, each update lr / sqrt(v); the sum over 200 steps
    v, f32_moved = 0.0, 0.0
    for _ in range(200):
        v = 0.99 * v + 0.01
        f32_moved += 1e-3 / (v ** 0.5 + 1e-8)
    assert moved[False] < 0.5 * f32_moved, moved  # nearest-even stalls once updates are small
    assert abs(moved[True] - f32_moved) < 0.1 * f32_moved, (moved, f32_moved)


def test_stochastic_rounding_is_deterministic_and_seeded():
    def run(seed, threads):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 300001).to(torch.bfloat16))
        opt = RMSprop([p], lr=1e-3, stochastic_rounding=True, seed=seed, num_threads=threads)
        for k in range(3):
            p.grad = torch.cos(torch.arange(300001) * (k + 1.0)).to(torch.bfloat16)
            opt.step()
        return p.detach().view(torch.int16).clone()
    a = run(1, 1)
    assert torch.equal(a, run(1, 2)), "stochastic rounding depends on the thread count"
    assert not torch.equal(a, run(2, 1)), "the seed does not matter"


def test_master_weights_with_bf16_grads_and_copy_match_torch():
    """f32 params and state, bfloat16 gradients, a bfloat16 copy of the new params: torch's
    float32 RMSprop on the widened gradients (within the project's rule), copy == params rounded."""
    torch.manual_seed(9)
    n = 10007
    p32 = torch.randn(n)
    g16 = torch.randn(n).to(torch.bfloat16)
    v = torch.zeros(n)
    b = torch.zeros(n)
    copy = torch.zeros(n, dtype=torch.bfloat16)
    q = torch.nn.Parameter(p32.clone())
    ref = torch.optim.RMSprop([q], lr=1e-2, momentum=0.9)
    before = p32.clone()
    for _ in range(5):
        rmsprop_simd.step_mixed(
            p32.numpy(), g16.view(torch.int16).numpy(), v.numpy(), None, b.numpy(),
            copy.view(torch.int16).numpy(), params_dtype="float32", grads_dtype="bfloat16",
            state_dtype="float32", copy_dtype="bfloat16", lr=1e-2, momentum=0.9)
        q.grad = g16.float()
        ref.step()
    from conftest import assert_rule
    assert_rule(p32.numpy(), q.detach().numpy(), before.numpy(), "params")
    assert torch.equal(copy.view(torch.int16), p32.to(torch.bfloat16).view(torch.int16))


def test_step_mixed_grad_scale_and_clip_are_fused():
    """grad_scale, clip_value and grad_multiplier equal unscaling, clamping and scaling the
    gradients first (what GradScaler.unscale_ and clip_grad_value_ do), bit for bit."""
    torch.manual_seed(2)
    n = 777
    p = torch.randn(n)
    g = (torch.randn(n) * 1024).to(torch.float16)
    v = torch.zeros(n)
    p2, v2 = p.clone(), v.clone()
    rmsprop_simd.step_mixed(p.numpy(), g.view(torch.int16).numpy(), v.numpy(), params_dtype="float32",
                            grads_dtype="float16", state_dtype="float32", lr=1e-2, grad_scale=1024.0,
                            clip_value=0.5, grad_multiplier=0.75)
    g2 = (g.float() / 1024.0).clamp(-0.5, 0.5) * 0.75
    rmsprop_simd.step(p2.numpy(), g2.numpy(), v2.numpy(), lr=1e-2)
    assert torch.equal(p.view(torch.int32), p2.view(torch.int32))
    assert torch.equal(v.view(torch.int32), v2.view(torch.int32))


@pytest.mark.parametrize("call, exc, needle", [
    (dict(params_dtype="bfloat8"), TypeError, "params_dtype"),
    (dict(rounding="up"), ValueError, "rounding"),
    (dict(grad_scale=0.0), ValueError, "grad_scale"),
    (dict(copy_dtype="bfloat16"), ValueError, "together"),
    (dict(grads_dtype="float32"), TypeError, "float32"),
])
def test_step_mixed_errors_write_nothing(call, exc, needle):
    p = np.ones(8, dtype=np.int16) * 0x3F80  # bfloat16 1.0
    g = np.ones(8, dtype=np.int16) * 0x3F80
    v = np.zeros(8, dtype=np.int16)
    kw = dict(params_dtype="bfloat16", grads_dtype="bfloat16", state_dtype="bfloat16", lr=1e-2)
    kw.update(call)
    with pytest.raises(exc, match=needle):
        rmsprop_simd.step_mixed(p, g, v, **kw)
    assert (p == 0x3F80).all() and (v == 0).all()


@pytest.mark.parametrize("norm_type", [1.0, 2.0, float("inf")])
def test_grad_norm_and_clip_coefficient_match_clip_grad_norm_(norm_type):
    """The total norm equals torch.nn.utils.clip_grad_norm_'s (float32 accumulation there,
    float64 here: within 1e-5 relative; the inf norm exactly), and with torch's total the
    coefficient scales every gradient to torch's clipped gradients bit for bit."""
    torch.manual_seed(4)
    shapes = [(300, 70), (64,), (1000, 37), (5,)]
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape) * 3
    grads = [p.grad.clone() for p in params]
    ours = rmsprop_simd.grad_norm([g.numpy() for g in grads], norm_type)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm=1.0, norm_type=norm_type).item()
    if norm_type == float("inf"):
        assert ours == total
    else:
        assert abs(ours - total) <= 1e-5 * total, (ours, total)
    coef = rmsprop_simd.clip_coefficient(total, 1.0)
    assert coef < 1.0
    for g, p in zip(grads, params):
        assert torch.equal(g * torch.tensor(coef, dtype=torch.float32), p.grad)
    # the coefficient folded into the step equals stepping torch's clipped gradients
    g0 = grads[0].numpy()
    a, va = np.zeros_like(g0), np.zeros_like(g0)
    b, vb = a.copy(), va.copy()
    rmsprop_simd.step_mixed(a, g0, va, params_dtype="float32", grads_dtype="float32",
                            state_dtype="float32", lr=1e-2, grad_multiplier=coef)
    rmsprop_simd.step(b, params[0].grad.numpy(), vb, lr=1e-2)
    assert np.array_equal(a.view(np.int32), b.view(np.int32))
