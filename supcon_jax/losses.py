"""Losses and accuracy metrics: SupCon (Khosla et al., NeurIPS 2020), cross-entropy, top-k.

`supcon_loss` computes, for every anchor i with positives P(i) among all other views A(i),
  L_out (eq. 2): -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t))
  L_in  (eq. 3): -log(1/|P(i)| sum_{p in P(i)} exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t))
With labels=None the positives are only the other views of the same image (SimCLR's NT-Xent).
Optional extra contrast rows E (e.g. a MoCo-style queue of momentum-encoder keys) are never
anchors but join every anchor's contrast set, A(i) = {other batch views} u E, and those with
the anchor's label join P(i) (with labels=None they are negatives only, as in MoCo v2).

Two options of the paper's official code (google-research supcon/losses.py) change the sets,
per anchor i with negatives N(i) (the rows of other labels):
- `denominator_mode` (its LossDenominatorMode): "all" sums A(i) = N(i) u P(i) in the
  denominator; "one_positive" gives each positive p its own denominator, {p} u N(i);
  "only_negatives" sums N(i) alone.
- `positives_cap` (>= 0): P(i) keeps the anchor's own other views and at most `positives_cap`
  other rows: whole samples of the batch, `positives_cap / n_views` of them, lowest global
  index first (what the official top_k over a 0/1 mask keeps), then extra rows in their order
  while the count allows. With "all" the positives capped out leave the denominator too.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from supcon_jax.checks import one_of

VARIANTS = ("out", "in")
CONTRAST_MODES = ("all", "one")
DENOMINATOR_MODES = ("all", "one_positive", "only_negatives")


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Row-wise log-sum-exp over `mask`; 0 for empty rows, with finite gradients everywhere."""
  # Masking before exp (not after) keeps overflowing exps of masked entries out of the gradient.
  x = jnp.where(mask, x, -jnp.inf)
  m = jnp.max(x, axis=-1, keepdims=True)
  m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  s = jnp.sum(jnp.exp(x - m), axis=-1)
  return m[..., 0] + jnp.log(jnp.where(s > 0, s, 1.0))


def _capped(pos, same, anchor_pos, n_views, batch_rows, cap):
  """`pos` with at most `cap` positives per anchor besides its own views (module docstring)."""
  cols = jnp.arange(pos.shape[1])[None, :]
  in_batch = cols < batch_rows
  own = in_batch & (cols // n_views == (anchor_pos // n_views)[:, None])
  others = same & in_batch & ~own
  # Rows are sample-major, so the running count of other samples' first views is, at every
  # view of a sample, that sample's rank among the anchor's other samples of its class.
  rank = jnp.cumsum(others & (cols % n_views == 0), axis=1)
  kept_samples = jnp.minimum(rank[:, -1:], cap // n_views)
  extra_rank = jnp.cumsum(same & ~in_batch, axis=1)
  keep = own | (others & (rank <= cap // n_views)) | (
      ~in_batch & (extra_rank <= cap - n_views * kept_samples))
  return pos & keep


def _anchor_losses(anchors, anchor_pos, anchor_labels, anchor_valid, contrast, contrast_labels,
                   temperature, variant, denominator_mode="all", positives_cap=-1, n_views=1,
                   batch_rows=0):
  """Sum of the per-anchor losses and the number of anchors that have a positive (and, with
  "only_negatives", a negative)."""
  # bf16 x bf16 products are exact in float32 accumulation, so the matmul stays on the input dtype.
  logits = jnp.matmul(anchors, contrast.T, preferred_element_type=jnp.float32) / temperature
  not_self = anchor_pos[:, None] != jnp.arange(contrast.shape[0])[None, :]
  same = anchor_labels[:, None] == contrast_labels[None, :]
  pos = same & not_self & anchor_valid[:, None]
  denominator = not_self
  if positives_cap >= 0:
    pos = _capped(pos, same, anchor_pos, n_views, batch_rows, positives_cap)
    denominator = pos | ~same
  if denominator_mode == "only_negatives":
    denominator = ~same
  num_pos = jnp.sum(pos, axis=1).astype(jnp.float32)
  valid = num_pos > 0
  if denominator_mode == "one_positive":
    # log(exp(l_p) / (exp(l_p) + sum_n exp(l_n))) for every positive p; 0 without negatives.
    has_neg = jnp.any(~same, axis=1, keepdims=True)
    log_neg = _masked_logsumexp(logits, ~same)[:, None]
    log_ratio = jnp.where(has_neg, logits - jnp.logaddexp(logits, log_neg), 0.0)
    if variant == "out":
      per_anchor = -jnp.sum(jnp.where(pos, log_ratio, 0.0), axis=1) / jnp.maximum(num_pos, 1)
    else:
      per_anchor = jnp.log(jnp.maximum(num_pos, 1)) - _masked_logsumexp(log_ratio, pos)
  else:
    if denominator_mode == "only_negatives":
      valid &= jnp.any(denominator, axis=1)  # no negative: log(0), the anchor is left out
    log_denom = _masked_logsumexp(logits, denominator)
    if variant == "out":
      per_anchor = (log_denom - jnp.sum(jnp.where(pos, logits, 0.0), axis=1)
                    / jnp.maximum(num_pos, 1))
    else:
      per_anchor = log_denom - _masked_logsumexp(logits, pos) + jnp.log(jnp.maximum(num_pos, 1))
  return jnp.sum(jnp.where(valid, per_anchor, 0.0)), jnp.sum(valid.astype(jnp.float32))


def _check_supcon_args(features, labels, temperature, base_temperature, variant, contrast_mode,
                       block_size, extra, extra_labels, denominator_mode, positives_cap):
  if features.ndim != 3:
    raise ValueError(f"features must be [batch, n_views, dim], got shape {features.shape}")
  if labels is not None and labels.shape != features.shape[:1]:
    raise ValueError(f"labels shape {labels.shape} does not match features batch "
                     f"{features.shape[:1]}")
  if extra is not None and (extra.ndim != 2 or extra.shape[1] != features.shape[2]):
    raise ValueError(f"extra must be [K, dim] with dim={features.shape[2]} as in features, got "
                     f"shape {extra.shape}")
  if extra_labels is not None:
    if extra is None:
      raise ValueError("extra_labels given without extra")
    if labels is None:
      # Silently ignoring them would hide a caller that forgot to pass the batch labels.
      raise ValueError("extra_labels given with labels=None: without labels the extra rows "
                       "are negatives only")
    if extra_labels.shape != extra.shape[:1]:
      raise ValueError(f"extra_labels shape {extra_labels.shape} does not match extra rows "
                       f"{extra.shape[:1]}")
  elif extra is not None and labels is not None:
    # Treating unlabelled extra rows as negatives would quietly drop their positives.
    raise ValueError("extra_labels is required when extra and labels are both given")
  for name, t in (("temperature", temperature), ("base_temperature", base_temperature)):
    if isinstance(t, numbers.Real) and t <= 0:
      raise ValueError(f"{name} must be > 0, got {t}")
  one_of("variant", variant, VARIANTS)
  one_of("contrast_mode", contrast_mode, CONTRAST_MODES)
  if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
    raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
  one_of("denominator_mode", denominator_mode, DENOMINATOR_MODES)
  if not isinstance(positives_cap, int) or positives_cap >= 0 and positives_cap % features.shape[1]:
    raise ValueError(f"positives_cap={positives_cap!r} must be an int, < 0 for no cap or a "
                     f"multiple of the {features.shape[1]} views (whole samples)")


def supcon_loss(features: jax.Array, labels: jax.Array | None = None, *,
                temperature: float = 0.1, base_temperature: float | None = None,
                variant: str = "out", contrast_mode: str = "all", axis_name: str | None = None,
                block_size: int | None = None, extra: jax.Array | None = None,
                extra_labels: jax.Array | None = None, denominator_mode: str = "all",
                positives_cap: int = -1) -> jax.Array:
  """Supervised contrastive loss, a float32 scalar.

  Args:
    features: [batch, n_views, dim], L2-normalised by the caller; any float dtype.
    labels: int [batch], or None for self-supervised SimCLR.
    temperature: softmax temperature t.
    base_temperature: the loss is scaled by t / base_temperature (None: no scaling).
    variant: "out" (L_out, eq. 2) or "in" (L_in, eq. 3).
    contrast_mode: "all" (every view is an anchor) or "one" (only view 0).
    axis_name: inside `jax.shard_map` with the batch split over this axis: local anchors are
      contrasted against the gathered global batch and the global mean is returned, replicated.
    block_size: anchors per block; blocks are rematerialised so the full [anchors, contrast]
      logits are never kept for the backward pass.
    extra: [K, dim] extra contrast rows, L2-normalised (e.g. a MoCo queue of momentum-encoder
      keys), cast to features' dtype. They are never anchors; every anchor is contrasted against
      them as well as the other batch views. The loss applies `lax.stop_gradient` to them, so
      the gradient with respect to extra is zero and no caller trains through a queue. With
      `axis_name` they are replicated (the same [K, dim] on every device) and not gathered.
      None (or K=0) gives exactly the loss without them.
    extra_labels: int [K], the labels of `extra`; rows whose label equals an anchor's are its
      positives. Required when both labels and extra are given, and must be None when labels
      is None: with SimCLR the extra rows are negatives only (MoCo v2).
    denominator_mode: "all", "one_positive" or "only_negatives" (module docstring).
    positives_cap: < 0 for none, else a multiple of n_views (module docstring).

  Anchors without positives (with "only_negatives", or without negatives) are left out of the
  mean; with none at all the loss is 0.
  """
  _check_supcon_args(features, labels, temperature, base_temperature, variant, contrast_mode,
                     block_size, extra, extra_labels, denominator_mode, positives_cap)
  batch, n_views, dim = features.shape
  offset = 0
  if labels is None:
    labels = jnp.arange(batch)
    if axis_name is not None:
      labels += lax.axis_index(axis_name) * batch  # global sample ids
  contrast, contrast_labels = features, labels
  if axis_name is not None:
    contrast = lax.all_gather(features, axis_name, tiled=True)
    contrast_labels = lax.all_gather(labels, axis_name, tiled=True)
    offset = lax.axis_index(axis_name) * batch
  # Rows are sample-major: view v of sample b sits at row b * n_views + v.
  contrast = contrast.reshape(-1, dim)
  batch_rows = contrast.shape[0]
  contrast_labels = jnp.repeat(contrast_labels, n_views)
  if extra is not None:
    if extra_labels is None:  # SimCLR: sample ids are >= 0, so -1 never makes a positive
      extra_labels = jnp.full(extra.shape[:1], -1, contrast_labels.dtype)
    # Appended after the batch rows, so no anchor_pos points at them: they are never "self".
    contrast = jnp.concatenate([contrast, lax.stop_gradient(extra).astype(contrast.dtype)])
    contrast_labels = jnp.concatenate([contrast_labels,
                                       jnp.asarray(extra_labels).astype(contrast_labels.dtype)])
  anchor_pos = (offset + jnp.arange(batch))[:, None] * n_views + jnp.arange(n_views)[None, :]
  if contrast_mode == "one":
    features, anchor_pos = features[:, :1], anchor_pos[:, :1]
  anchors = features.reshape(-1, dim)
  anchor_pos = anchor_pos.reshape(-1)
  anchor_labels = jnp.repeat(labels, anchors.shape[0] // batch)
  anchor_valid = jnp.ones(anchors.shape[0], bool)

  def block_loss(rows):
    return _anchor_losses(*rows, contrast, contrast_labels, temperature, variant,
                          denominator_mode, positives_cap, n_views, batch_rows)

  rows = (anchors, anchor_pos, anchor_labels, anchor_valid)
  if block_size is None:
    total, count = block_loss(rows)
  else:
    pad = -anchors.shape[0] % block_size  # padded rows have anchor_valid False
    rows = [jnp.pad(r, [(0, pad)] + [(0, 0)] * (r.ndim - 1)) for r in rows]
    rows = [r.reshape(-1, block_size, *r.shape[1:]) for r in rows]
    totals, counts = lax.map(jax.checkpoint(block_loss), rows)
    total, count = jnp.sum(totals), jnp.sum(counts)
  if axis_name is not None:
    total, count = lax.psum((total, count), axis_name)
  scale = 1.0 if base_temperature is None else temperature / base_temperature
  return (scale * total / jnp.maximum(count, 1.0)).astype(jnp.float32)


def sharded_supcon_loss(features: jax.Array, labels: jax.Array | None, mesh: Mesh, *,
                        axis_name: str = "data", extra: jax.Array | None = None,
                        extra_labels: jax.Array | None = None, **kwargs: Any) -> jax.Array:
  """`supcon_loss` on batch-sharded global arrays, each device contrasting its own anchors.

  `extra` and `extra_labels` are replicated (in_spec P()): every device sees all K rows.
  """
  specs = {"labels": P(axis_name), "extra": P(), "extra_labels": P()}
  # shard_map takes no None, so only the given arrays travel, by name.
  given = {name: x for name, x in
           (("labels", labels), ("extra", extra), ("extra_labels", extra_labels)) if x is not None}

  def local(f, named):
    return supcon_loss(f, named.get("labels"), axis_name=axis_name, extra=named.get("extra"),
                       extra_labels=named.get("extra_labels"), **kwargs)

  return jax.shard_map(local, mesh=mesh, in_specs=(P(axis_name), {k: specs[k] for k in given}),
                       out_specs=P())(features, given)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
                       weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy (weighted by `weights`, e.g. a padding mask), float32."""
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"need logits [batch, classes] and labels [batch], got {logits.shape} "
                     f"and {labels.shape}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  if weights is not None and weights.shape != labels.shape:
    raise ValueError(f"weights shape {weights.shape} does not match labels {labels.shape}")
  num_classes = logits.shape[-1]
  targets = (jax.nn.one_hot(labels, num_classes) * (1.0 - label_smoothing)
             + label_smoothing / num_classes)
  losses = -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
  if weights is None:
    return jnp.mean(losses)
  weights = weights.astype(jnp.float32)
  return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1e-8)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """float32 [batch]: 1.0 where the label is among the k largest logits (ties: lower index)."""
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"need logits [batch, classes] and labels [batch], got {logits.shape} "
                     f"and {labels.shape}")
  if not 1 <= k <= logits.shape[-1]:
    raise ValueError(f"k must be in [1, {logits.shape[-1]}], got {k}")
  top = lax.top_k(logits, k)[1]
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def topk_accuracy(logits: jax.Array, labels: jax.Array, k: int = 1) -> jax.Array:
  """Fraction of examples whose label is among the k largest logits."""
  return jnp.mean(topk_correct(logits, labels, k))
