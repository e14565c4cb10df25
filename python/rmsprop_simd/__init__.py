"""rmsprop-simd: the fused SIMD RMSprop step (PyTorch's arithmetic) for numpy arrays, and
``rmsprop_simd.torch.RMSprop``, a drop-in for ``torch.optim.RMSprop``.

Functions (numpy arrays, in place; the GIL is released during the step):

- ``step(params, grads, square_avg, grad_avg=None, momentum_buffer=None, *, lr, alpha=0.99,
  eps=1e-8, weight_decay=0, momentum=0, centered=False, maximize=False, num_threads=None)``
- ``step_many(params, grads, square_avgs, grad_avgs=None, momentum_buffers=None, *, lr, ...)``:
  lists of arrays sharing hyperparameters (a parameter group), one call, balanced across threads.
- ``step_mixed(params, grads, square_avg, grad_avg=None, momentum_buffer=None, params_copy=None,
  *, params_dtype, grads_dtype, state_dtype, copy_dtype=None, lr, ..., grad_scale=1.0,
  clip_value=None, grad_multiplier=1.0, rounding="nearest", seed=0, step=0)``: float32, bfloat16
  or float16 storage (16-bit arrays as uint16/int16 bits) in any mix, computed in float32, with
  gradient unscaling/clamping and nearest-even or stochastic rounding fused into the pass.
- ``grad_norm(grads, norm_type=2.0)`` (1, 2 or inf over a list of arrays, as
  ``clip_grad_norm_``) and ``clip_coefficient(total_norm, max_norm)`` (its float32 coefficient,
  to pass as ``grad_multiplier``).

For ``step`` / ``step_many`` every array is C-contiguous, float32 or float64 (one dtype per call), and as long as its params;
``grads`` is only read. Bad input raises ``TypeError`` or ``ValueError`` and writes nothing.
``import rmsprop_simd`` does not import torch.
"""

from ._native import (
    __version__,
    backend,
    check_hyperparameters,
    clip_coefficient,
    grad_norm,
    parallel_min_len,
    step,
    step_many,
    step_mixed,
)

__all__ = [
    "step",
    "step_many",
    "step_mixed",
    "grad_norm",
    "clip_coefficient",
    "check_hyperparameters",
    "backend",
    "parallel_min_len",
    "__version__",
]
