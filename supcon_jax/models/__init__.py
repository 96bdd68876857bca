"""Model construction from the `model` section of the config."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from supcon_jax.models.heads import CEModel, LinearClassifier, ProjectionHead, SupConModel
from supcon_jax.models.resnet import ResNet, feature_dim

__all__ = ["CEModel", "LinearClassifier", "ProjectionHead", "ResNet", "SupConModel",
           "build_encoder", "build_model", "compute_dtype", "feature_dim"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONTRASTIVE_METHODS = ("supcon", "simclr")
METHODS = CONTRASTIVE_METHODS + ("ce",)


def compute_dtype(name: Any) -> Any:
  """The computation dtype for a config name ("float32" | "bfloat16") or such a dtype itself."""
  key = name if isinstance(name, str) else jnp.dtype(name).name
  if key not in DTYPES:
    raise ValueError(f"unknown model dtype {name!r}; valid dtypes: {list(DTYPES)}")
  return DTYPES[key]


def _encoder_kwargs(model_config) -> dict[str, Any]:
  return dict(depth=model_config.depth, width=model_config.width, stem=model_config.stem,
              zero_init_residual=model_config.zero_init_residual,
              dtype=compute_dtype(model_config.dtype))


def build_encoder(model_config) -> ResNet:
  """The ResNet alone (its variables are those under "encoder" in build_model's model)."""
  return ResNet(**_encoder_kwargs(model_config))


def build_model(model_config, method: str, num_classes: int) -> nn.Module:
  """SupConModel for supcon/simclr, CEModel (with `num_classes` logits) for ce."""
  if method in CONTRASTIVE_METHODS:
    return SupConModel(**_encoder_kwargs(model_config), head=model_config.head,
                       proj_dim=model_config.proj_dim)
  if method == "ce":
    return CEModel(num_classes=num_classes, **_encoder_kwargs(model_config))
  raise ValueError(f"unknown method {method!r}; valid methods: {list(METHODS)}")
