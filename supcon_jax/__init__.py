"""Supervised Contrastive Learning (Khosla et al., NeurIPS 2020) in JAX/Flax.

`supcon_jax.load_encoder(workdir)` gives a trained model that embeds images (trained.py).
It is imported on first use, so `import supcon_jax` (e.g. for `__version__`) loads no JAX.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"load_encoder": "supcon_jax.trained", "TrainedModel": "supcon_jax.trained"}


def __getattr__(name: str) -> Any:
  """The names of `_LAZY`, imported from their module when first asked for."""
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'supcon_jax' has no attribute {name!r}")
