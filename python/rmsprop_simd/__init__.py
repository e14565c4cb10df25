"""rmsprop-simd: the fused SIMD RMSprop step (PyTorch's arithmetic) for numpy arrays, and
``rmsprop_simd.torch.RMSprop``, a drop-in for ``torch.optim.RMSprop``.

Functions (numpy arrays, in place; the GIL is released during the step):

- ``step(params, grads, square_avg, grad_avg=None, momentum_buffer=None, *, lr, alpha=0.99,
  eps=1e-8, weight_decay=0, momentum=0, centered=False, maximize=False, num_threads=None)``
- ``step_many(params, grads, square_avgs, grad_avgs=None, momentum_buffers=None, *, lr, ...)``:
  lists of arrays sharing hyperparameters (a parameter group), one call, balanced across threads.

Every array is C-contiguous, float32 or float64 (one dtype per call), and as long as its params;
``grads`` is only read. Bad input raises ``TypeError`` or ``ValueError`` and writes nothing.
``import rmsprop_simd`` does not import torch.
"""

from ._native import __version__, backend, check_hyperparameters, parallel_min_len, step, step_many

__all__ = [
    "step",
    "step_many",
    "check_hyperparameters",
    "backend",
    "parallel_min_len",
    "__version__",
]
