"""The Triton twins of `reference.py` in one namespace: same signatures, same results (issue 3).

`kernels._pick("triton")` returns this module. Each op lives in its own file beside a shared one,
and `reference.py` holds the PyTorch reference each is tested against:

  op                                          file                       vs reference.*
  quantize(y, means)                          triton_quantize.py         bit-exact
  quantize_with_indexes(y, means, h, ...)     triton_quantize.py         bit-exact, one launch
  scale_indexes(h, weight, bias, shift, lvls) triton_scale_indexes.py    bit-exact
  gaussian_likelihood(y, means, scales, lb)   triton_likelihood.py       fp tolerance, fused backward
  (dtype map, exact casts, launch config, custom-op registration: _triton_common.py)

Every op is a `torch.library` custom op (namespace `slim_rt`) with a fake implementation, so
`torch.compile(fullgraph=True)` traces through them. Importing this module registers the ops and
changes no global setting; it is reachable both as `kernels` and as `slim_rt.kernels`, and
`_triton_common._custom_op` reuses a registration made by the other copy.
"""
from __future__ import annotations

from .triton_likelihood import gaussian_likelihood
from .triton_quantize import SYMBOL_LIMIT, quantize, quantize_with_indexes
from .triton_scale_indexes import scale_indexes

__all__ = ["quantize", "scale_indexes", "quantize_with_indexes", "gaussian_likelihood", "SYMBOL_LIMIT"]
