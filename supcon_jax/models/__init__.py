"""ResNet encoders, heads, and the models the methods train (built from `config.model`)."""

from __future__ import annotations

from typing import Any

from supcon_jax.models.heads import (
  HEADS,
  CEModel,
  LinearClassifier,
  ProjectionHead,
  SupConModel,
  head_macs,
)
from supcon_jax.models.resnet import (
  DEPTHS,
  DTYPES,
  STEMS,
  ResNet,
  compute_dtype,
  feature_dim,
  forward_macs,
)

__all__ = ["CEModel", "DEPTHS", "DTYPES", "HEADS", "LinearClassifier", "ProjectionHead",
           "ResNet", "STEMS", "SupConModel", "build_encoder", "compute_dtype", "encoder_kwargs",
           "feature_dim", "forward_macs", "head_macs"]


def encoder_kwargs(model_config: Any) -> dict[str, Any]:
  """The ResNet fields of `config.model`, as every model's constructor takes them."""
  return dict(depth=model_config.depth, width=model_config.width, stem=model_config.stem,
              zero_init_residual=model_config.zero_init_residual,
              dtype=compute_dtype(model_config.dtype))


def build_encoder(model_config: Any) -> ResNet:
  """The ResNet alone (its variables are those under "encoder" in every method's model)."""
  return ResNet(**encoder_kwargs(model_config))
