"""trustfast: fast, correct trustworthy-ML methods on fused kernels.

Layers (imports point down): research methods per domain -> `trustfast.metrics` / `trustfast.data`
-> `trustfast.ops` (validate, dispatch, backend) -> `trustfast.kernels` (Triton) and `trustfast._C`
(C++). Heavy optional libraries (diffusers, transformers, deepspeed) are imported lazily.
"""

from trustfast import ops, optim
from trustfast._meta import TrustfastWarning, __version__

__all__ = ["TrustfastWarning", "__version__", "ops", "optim"]
