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
  * a persistent grid: each program loops over row tiles of BLOCK_N rows, and over each row in
    BLOCK_C-wide column tiles (narrow rows: many rows per tile, C = 80 as five unrolled 16-wide
    tiles; wide rows: 2-4 rows per tile). A row tile first reads its labels for the row statistics
    (the re-weighting needs the whole row), then computes loss and gradient.
  * few rows of many columns: the columns are also split over programs, and ``_stats_kernel``
    first writes each chunk's partial row statistics, which every program adds in chunk order.
    weight_norm="by_batch" runs ``_stats_kernel`` too: it also takes the batch max of the
    re-weighting (an atomic max of order-preserving integer keys: exact in any order).
  * the sum: every program writes its partial (already times aux[0]) and takes a ticket; the last
    one adds the partials in index order. No float atomics anywhere: results are bit-reproducible.
"""
from .aot import specialisations
from .launcher import fused, scale_grad, usable
from .tuning import force_tiles

_force_tiles = force_tiles  # the tests' name for it

__all__ = ["fused", "scale_grad", "usable", "specialisations", "force_tiles"]
