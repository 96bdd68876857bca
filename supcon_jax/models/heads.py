"""Heads on the ResNet representation, and the full models the trainer builds.

SupConModel and CEModel both keep the encoder as the submodule "encoder", so its params and
batch_stats (`variables[...]["encoder"]`) have the same structure in either and the linear
evaluation can take the frozen encoder from a SupCon or a cross-entropy run alike.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from supcon_jax.checks import one_of
from supcon_jax.models.resnet import ResNet, check_encoder_args, feature_dim

HEADS = ("mlp", "linear")  # mlp: Dense(d)-ReLU-Dense(proj_dim) | linear: Dense(proj_dim)


def l2_normalize(z: jax.Array, eps: float = 1e-12) -> jax.Array:
  """z / max(||z||, eps) in float32, along the last axis (PyTorch's F.normalize).

  Clamping the squared norm before rsqrt keeps the value and the gradient finite at z = 0,
  where d||z|| is undefined.
  """
  z = z.astype(jnp.float32)
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), eps * eps))


def head_macs(kind: str, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> int:
  """Multiply-accumulates of `ProjectionHead(kind)` on one representation of `in_dim`."""
  one_of("projection head", kind, HEADS)
  if kind == "linear":
    return in_dim * out_dim
  hidden = hidden_dim or in_dim
  return in_dim * hidden + hidden * out_dim


class ProjectionHead(nn.Module):
  """r -> z on the unit sphere: Dense-ReLU-Dense ("mlp") or Dense ("linear")."""
  kind: str = "mlp"
  hidden_dim: int | None = None  # None: the input's size (the paper's mlp head)
  out_dim: int = 128
  dtype: Any = jnp.float32

  def __post_init__(self):
    one_of("projection head", self.kind, HEADS)
    super().__post_init__()

  @nn.compact
  def __call__(self, r):
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    x = r
    if self.kind == "mlp":
      x = nn.relu(dense(self.hidden_dim or r.shape[-1], name="hidden")(x))
    return l2_normalize(dense(self.out_dim, name="out")(x))


class SupConModel(nn.Module):
  """Encoder + projection head for SupCon/SimCLR: {"repr": r, "proj": z}, both float32.

  With `probe_classes`, also a linear classifier on r, "probe" ({"logits": ...}): behind a
  stop-gradient (`probe_stop_gradient`) an online probe that leaves the encoder as it is;
  without it, cross-entropy trains the encoder with the contrastive loss.
  """
  depth: int
  width: float = 1.0
  stem: str = "cifar"
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  head: str = "mlp"
  proj_dim: int = 128
  probe_classes: int = 0
  probe_stop_gradient: bool = True

  def __post_init__(self):
    check_encoder_args(self.depth, self.width, self.stem)
    one_of("projection head", self.head, HEADS)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, jax.Array]:
    r = ResNet(self.depth, self.width, self.stem, self.zero_init_residual, self.dtype,
               name="encoder")(x, train)
    z = ProjectionHead(self.head, feature_dim(self.depth, self.width), self.proj_dim, self.dtype,
                       name="head")(r)
    if not self.probe_classes:
      return {"repr": r, "proj": z}
    probe_in = jax.lax.stop_gradient(r) if self.probe_stop_gradient else r
    return {"repr": r, "proj": z,
            "logits": LinearClassifier(self.probe_classes, name="probe")(probe_in)}


class CEModel(nn.Module):
  """Encoder + linear classifier, the cross-entropy baseline: {"repr": r, "logits": float32}.

  num_classes 0: the encoder alone, {"repr": r} (an imported encoder without its fc).
  """
  depth: int
  num_classes: int
  width: float = 1.0
  stem: str = "cifar"
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    check_encoder_args(self.depth, self.width, self.stem)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, jax.Array]:
    r = ResNet(self.depth, self.width, self.stem, self.zero_init_residual, self.dtype,
               name="encoder")(x, train)
    if not self.num_classes:
      return {"repr": r}
    return {"repr": r, "logits": LinearClassifier(self.num_classes, name="classifier")(r)}


class LinearClassifier(nn.Module):
  """Dense on r -> float32 logits; the linear probe on a frozen encoder, and CE's classifier."""
  num_classes: int

  @nn.compact
  def __call__(self, r) -> jax.Array:
    # float32 throughout: it is tiny, and the logits feed a softmax.
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                    name="dense")(r.astype(jnp.float32))
