"""``RMSprop``: a drop-in for ``torch.optim.RMSprop`` backed by rmsprop-simd's fused kernel.

Same constructor, defaults and validation messages as ``torch.optim.RMSprop``; ``step``,
``zero_grad``, ``add_param_group``, hooks and ``state_dict`` / ``load_state_dict`` come from
``torch.optim.Optimizer``, with the same state names (``step``, ``square_avg``, ``grad_avg``,
``momentum_buffer``), so state dicts move between the two in both directions.

Each parameter group is stepped by one call into Rust (all its tensors at once, balanced across
threads; ``torch.get_num_threads()`` threads unless ``num_threads`` is given). Results equal
PyTorch's up to rounding (PyTorch's CPU ``sqrt`` is not correctly rounded), within the
project's golden rule.

Tensors: CPU float32, float64, complex64, complex128 (complex as ``torch.view_as_real``, like
torch), bfloat16 and float16. 16-bit parameters keep 16-bit gradients and state (as torch does)
but are computed in float32 with one rounding per stored result, not one per operation as
torch's 16-bit arithmetic: more accurate than torch, so equal to torch's float32 step rounded to
the parameter's dtype rather than to torch's bfloat16 step. ``stochastic_rounding=True``
(keyword-only) rounds them stochastically, keyed by ``seed``, the step number and the element
index, so small updates are not lost (see the project README's bf16 training example). Non-contiguous tensors still step correctly: when a parameter, its gradient and its
state share one dense layout (channels-last, transposed) they are stepped in place through a
flat view, at full speed; otherwise they go through contiguous copies (one extra copy of each
non-contiguous buffer in and of each written one out: a few times the cost of a contiguous
step for that tensor). Sparse gradients raise as torch does; a tensor on another device, or of
another dtype, raises before anything is written.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _native

__all__ = ["RMSprop"]

_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128, torch.bfloat16, torch.float16)
# 16-bit parameters (with gradients and state of the same dtype, as torch keeps them) are
# computed in float32: each value widened exactly, one float32 step, each result rounded once.
_HALF = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _scalar_dtype():
    # torch.optim keeps `step` as float64 when the default dtype is float64, else float32.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _flat(t: Tensor):
    """A 1-D view of all of ``t``'s elements in memory order if ``t`` is non-overlapping and
    dense (any permutation of dimensions), else None."""
    if t.is_contiguous():
        return t.view(-1)
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return None
        expected *= size
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


class RMSprop(Optimizer):
    """``torch.optim.RMSprop`` with rmsprop-simd's fused kernel (see the module docs).

    ``num_threads`` (keyword-only, not in torch): threads for large groups; None follows
    ``torch.get_num_threads()`` at each step, 1 keeps every step on the calling thread.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        num_threads: int | None = None,
        stochastic_rounding: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= momentum:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= alpha:
            raise ValueError(f"Invalid alpha value: {alpha}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"Invalid num_threads value: {num_threads}")
        self.num_threads = num_threads
        self.stochastic_rounding = bool(stochastic_rounding)
        self.seed = int(seed)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict):
        self.__dict__.pop("_view_cache", None)  # new state tensors: check and view them afresh
        super().load_state_dict(state_dict)

    def __setstate__(self, state):
        state.pop("_view_cache", None)
        super().__setstate__(state)
        self.__dict__.setdefault("num_threads", None)
        self.__dict__.setdefault("stochastic_rounding", False)
        self.__dict__.setdefault("seed", 0)
        for group in self.param_groups:
            group.setdefault("momentum", 0)
            group.setdefault("centered", False)
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)
            for p in group["params"]:
                p_state = self.state.get(p, [])
                if len(p_state) != 0 and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_scalar_dtype())

    def _check_group(self, g: int, group) -> list:
        """Everything that could refuse the step, before anything is written: the group's
        switches, every tensor's device, dtype, layout and gradient. Returns the parameters
        that have a gradient."""
        if group["differentiable"]:
            raise ValueError(
                "rmsprop_simd.torch.RMSprop does not support differentiable=True: the fused "
                "step is not recorded by autograd (use torch.optim.RMSprop for that)"
            )
        if group["capturable"]:
            raise ValueError(
                "rmsprop_simd.torch.RMSprop does not support capturable=True: it is for CUDA "
                "graph capture, and this optimizer steps CPU tensors"
            )
        lr = group["lr"]
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")
            lr = lr.item()
        for key, value in (("lr", lr), ("alpha", group["alpha"]), ("eps", group["eps"]),
                           ("weight_decay", group["weight_decay"]), ("momentum", group["momentum"])):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"param_groups[{g}]['{key}'] must be a number, got {type(value).__name__}")
        with_grad = []
        seen = set()
        for i, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            if id(p) in seen:
                raise ValueError(f"param_groups[{g}] holds parameter {i} twice")
            seen.add(id(p))
            if grad.is_sparse:
                raise RuntimeError("RMSprop does not support sparse gradients")
            if (p.is_cpu and grad.is_cpu and p.dtype in _DTYPES and grad.dtype is p.dtype
                    and grad.layout is torch.strided and grad.shape == p.shape
                    and p in self.__dict__.get("_view_cache", ())):
                # the common case: checked in full on an earlier step, state unchanged since
                # (the view cache is keyed on the state tensors; _views rechecks them)
                with_grad.append(p)
                continue
            for what, t in (("parameter", p), ("gradient", grad)):
                if t.device.type != "cpu":
                    raise RuntimeError(
                        f"rmsprop_simd.torch.RMSprop steps CPU tensors; the {what} {i} of "
                        f"param_groups[{g}] is on {t.device}"
                    )
                if t.dtype not in _DTYPES:
                    raise TypeError(
                        f"rmsprop_simd.torch.RMSprop steps float32, float64, complex64, "
                        f"complex128, bfloat16 and float16 tensors; the {what} {i} of "
                        f"param_groups[{g}] is {t.dtype}"
                    )
                if t.layout != torch.strided:
                    raise RuntimeError(f"the {what} {i} of param_groups[{g}] has layout {t.layout}")
            if p.grad.dtype != p.dtype or p.grad.shape != p.shape:
                raise RuntimeError(
                    f"the gradient of parameter {i} of param_groups[{g}] is {p.grad.dtype} "
                    f"{tuple(p.grad.shape)}, the parameter {p.dtype} {tuple(p.shape)}"
                )
            for name in ("square_avg", "grad_avg", "momentum_buffer"):
                s = self.state.get(p, {}).get(name)
                if s is not None and (s.device.type != "cpu" or s.dtype != p.dtype or s.shape != p.shape):
                    raise RuntimeError(
                        f"state {name} of parameter {i} of param_groups[{g}] is {s.dtype} "
                        f"{tuple(s.shape)} on {s.device}, the parameter {p.dtype} {tuple(p.shape)}"
                    )
            with_grad.append(p)
        # the values themselves, as the kernel will check them for this dtype
        for dtype in {p.dtype for p in with_grad}:
            real = "float64" if dtype in (torch.float64, torch.complex128) else "float32"
            try:
                _native.check_hyperparameters(
                    real, lr=float(lr), alpha=float(group["alpha"]), eps=float(group["eps"]),
                    weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
                )
            except ValueError as e:
                raise ValueError(f"param_groups[{g}]: {e}") from None
        # a group switched to centered / momentum after its state was created: torch raises
        # KeyError on that buffer at this step; so does this optimizer (before writing)
        needed = ["square_avg"] + (["grad_avg"] if group["centered"] else []) + (
            ["momentum_buffer"] if group["momentum"] > 0 else [])
        for p in with_grad:
            state = self.state.get(p, {})
            if len(state) != 0:
                for name in needed:
                    if name not in state:
                        raise KeyError(name)
        return with_grad

    @torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step (every group; one call into Rust per group).

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        checked = [self._check_group(g, group) for g, group in enumerate(self.param_groups)]
        threads = self.num_threads or torch.get_num_threads()
        for group, params in zip(self.param_groups, checked):
            if params:
                self._step_group(group, params, threads)
        return loss

    def _views(self, p, state, names):
        """numpy views of the parameter and its state (flat, in memory order), cached while the
        parameter's storage and state tensors stay the same objects; None when they do not share
        one dense layout (then the step goes through contiguous copies)."""
        cache = self.__dict__.setdefault("_view_cache", {})
        key = (p.data_ptr(), p.stride()) + tuple(id(state[n]) for n in names)
        hit = cache.get(p)
        if hit is not None and hit[0] == key:
            return hit[1]
        tensors = [_real(p.detach())] + [_real(state[n]) for n in names]
        views = [_flat(t) for t in tensors]
        if any(v is None for v in views) or any(t.stride() != tensors[0].stride() for t in tensors):
            cache.pop(p, None)
            return None
        arrays = ([v.numpy() for v in views], tensors[0].stride())
        cache[p] = (key, arrays)
        return arrays

    def _step_group(self, group, params, threads: int) -> None:
        centered, momentum = bool(group["centered"]), group["momentum"] > 0
        lr = group["lr"].item() if isinstance(group["lr"], Tensor) else group["lr"]
        names = ["square_avg"] + (["grad_avg"] if centered else []) + (["momentum_buffer"] if momentum else [])
        columns = [[] for _ in range(len(names) + 2)]  # params, grads, then each state buffer
        copy_back = []  # (destination, contiguous copy) for tensors stepped through copies
        fresh = []
        steps = []
        for p in params:
            state = self.state.get(p)
            if not state:  # torch's lazy state initialisation
                state = {"step": torch.zeros((), dtype=_scalar_dtype())}
                for n in names:
                    state[n] = torch.zeros_like(p, memory_format=torch.preserve_format)
                fresh.append((p, state))
            steps.append(state["step"])
            if p.dtype in _HALF:
                self._step_half(group, p, state, names, lr, threads)
                continue
            g = _real(p.grad)
            cached = self._views(p, state, names)
            grad_view = _flat(g) if cached is not None and g.stride() == cached[1] else None
            if grad_view is not None:
                arrays = cached[0]
                columns[0].append(arrays[0])
                columns[1].append(grad_view.numpy())
                for k in range(len(names)):
                    columns[k + 2].append(arrays[k + 1])
                continue
            # different layouts: contiguous copies in, written ones copied back after the step
            tensors = [_real(p.detach()), g] + [_real(state[n]) for n in names]
            for k, t in enumerate(tensors):
                c = t.contiguous().view(-1)
                if k != 1 and c.data_ptr() != t.data_ptr():
                    copy_back.append((t, c))
                columns[k].append(c.numpy())
        by_name = dict(zip(names, columns[2:]))
        if columns[0]:
            self._step_many(group, columns, by_name, lr, centered, threads)
        for dst, src in copy_back:
            dst.copy_(src.view(dst.shape))
        torch._foreach_add_(steps, 1)  # every step count at once, as torch's foreach path does
        for p, state in fresh:
            self.state[p] = state

    def _step_half(self, group, p, state, names, lr, threads: int) -> None:
        """One bfloat16 / float16 tensor: its bits as int16 numpy arrays (through contiguous
        copies when a tensor is not contiguous), one fused float32 step, results rounded."""
        tensors = [p.detach(), p.grad] + [state[n] for n in names]
        arrays, copy_back = [], []
        for k, t in enumerate(tensors):
            c = t.contiguous()
            if k != 1 and c.data_ptr() != t.data_ptr():
                copy_back.append((t, c))
            arrays.append(c.view(-1).view(torch.int16).numpy())
        by_name = dict(zip(names, arrays[2:]))
        dtype = _HALF[p.dtype]
        _native.step_mixed(
            arrays[0], arrays[1], by_name["square_avg"], by_name.get("grad_avg"),
            by_name.get("momentum_buffer"), params_dtype=dtype, grads_dtype=dtype, state_dtype=dtype,
            lr=float(lr), alpha=float(group["alpha"]), eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
            centered=bool(group["centered"]), maximize=bool(group["maximize"]),
            rounding="stochastic" if self.stochastic_rounding else "nearest",
            seed=self.seed, step=int(state["step"].item()), num_threads=threads,
        )
        for dst, src in copy_back:
            dst.copy_(src)

    def _step_many(self, group, columns, by_name, lr, centered, threads: int) -> None:
        _native.step_many(
            columns[0], columns[1], by_name["square_avg"],
            by_name.get("grad_avg"), by_name.get("momentum_buffer"),
            lr=float(lr), alpha=float(group["alpha"]), eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
            centered=centered, maximize=bool(group["maximize"]), num_threads=threads,
        )
