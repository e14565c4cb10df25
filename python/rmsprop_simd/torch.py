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
torch). Non-contiguous tensors still step correctly: when a parameter, its gradient and its
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

_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


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

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("num_threads", None)
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
            if p.grad is None:
                continue
            if id(p) in seen:
                raise ValueError(f"param_groups[{g}] holds parameter {i} twice")
            seen.add(id(p))
            if p.grad.is_sparse:
                raise RuntimeError("RMSprop does not support sparse gradients")
            for what, t in (("parameter", p), ("gradient", p.grad)):
                if t.device.type != "cpu":
                    raise RuntimeError(
                        f"rmsprop_simd.torch.RMSprop steps CPU tensors; the {what} {i} of "
                        f"param_groups[{g}] is on {t.device}"
                    )
                if t.dtype not in _DTYPES:
                    raise TypeError(
                        f"rmsprop_simd.torch.RMSprop steps float32, float64, complex64 and "
                        f"complex128 tensors; the {what} {i} of param_groups[{g}] is {t.dtype}"
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
            real = "float32" if dtype in (torch.float32, torch.complex64) else "float64"
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

    def _step_group(self, group, params, threads: int) -> None:
        centered, momentum = bool(group["centered"]), group["momentum"] > 0
        lr = group["lr"].item() if isinstance(group["lr"], Tensor) else group["lr"]
        arrays = {"params": [], "grads": [], "square_avgs": [], "grad_avgs": [], "momentum_buffers": []}
        copy_back = []  # (destination, contiguous copy) for tensors stepped through copies
        states = []
        for p in params:
            state = self.state[p]
            fresh = len(state) == 0
            if fresh:  # torch's lazy state initialisation
                state = {"step": torch.zeros((), dtype=_scalar_dtype())}
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if momentum:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if centered:
                    state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states.append((p, state, fresh))
            names = ["square_avg"] + (["grad_avg"] if centered else []) + (["momentum_buffer"] if momentum else [])
            tensors = [_real(p.detach()), _real(p.grad)] + [_real(state[n]) for n in names]
            views = [_flat(t) for t in tensors]
            same_layout = all(v is not None for v in views) and all(
                t.stride() == tensors[0].stride() for t in tensors
            )
            if not same_layout:
                views = []
                for k, t in enumerate(tensors):
                    c = t.contiguous().view(-1)
                    if k != 1 and c.data_ptr() != t.data_ptr():
                        copy_back.append((t, c))
                    views.append(c)
            arrays["params"].append(views[0].numpy())
            arrays["grads"].append(views[1].numpy())
            for n, v in zip(names, views[2:]):
                arrays[{"square_avg": "square_avgs", "grad_avg": "grad_avgs",
                        "momentum_buffer": "momentum_buffers"}[n]].append(v.numpy())
        _native.step_many(
            arrays["params"], arrays["grads"], arrays["square_avgs"],
            arrays["grad_avgs"] if centered else None,
            arrays["momentum_buffers"] if momentum else None,
            lr=float(lr), alpha=float(group["alpha"]), eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]), momentum=float(group["momentum"]),
            centered=centered, maximize=bool(group["maximize"]), num_threads=threads,
        )
        for dst, src in copy_back:
            dst.copy_(src.view(dst.shape))
        for p, state, fresh in states:
            state["step"] += 1
            if fresh:
                self.state[p] = state
