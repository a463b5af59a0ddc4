"""Triton backend: the fused Distribution-Balanced loss and its gradient in one pass over the logits.

Same contract as the C++/CUDA op (see ``_spec.py``): ``fused(*ops.op_args(...)) -> (loss, grad)``;
the gradient is finished in the forward (the Jacobian is diagonal), backward only scales it by
``grad_output`` with :func:`scale_grad`, which reads ``grad_output`` on the device.

Modules, by role:
  * ``_math``: transcendentals and the BCE / focal terms (diff against ``reference.py`` and
    ``csrc/dbl_math.h``);
  * ``kernels``: the ``@triton.jit`` kernels;
  * ``tuning``: tile tables, autotune sets, the ``force_tiles`` test hook;
  * ``launcher``: the host-side launcher, the ``dbl::fused_triton`` op and the gradient scale;
  * ``aot``: every launchable specialisation, for ahead-of-time compilation checks.

Kernel layout (one kernel, ``_fused_kernel``, specialised by constexprs)
  * rows regime, ``C <= ONE_TILE_MAX_C``: a program owns ``BLOCK_N`` whole rows, either as one
    tile of next_pow2(C) columns (row statistics from the label tile in registers) or, where that
    pads C by more than 10% (C = 80), as 16/32-wide column tiles with a labels-only statistics
    pass first; the autotuner picks.
  * large ``C``: one row per program, columns looped: the statistics pass first, then loss and
    gradient. When there are too few rows to fill the GPU the columns are also split over
    ``split`` programs, and ``_stats_kernel`` first writes each chunk's partial row statistics,
    which every program adds in chunk order.
  * reductions: every program writes its partial sum (already times aux[0]); ``_sum_kernel``
    adds them in index order. No float atomics anywhere: results are bit-reproducible.
"""
from .aot import specialisations
from .launcher import fused, scale_grad, usable
from .tuning import force_tiles

_force_tiles = force_tiles  # the tests' name for it

__all__ = ["fused", "scale_grad", "usable", "specialisations", "force_tiles"]
