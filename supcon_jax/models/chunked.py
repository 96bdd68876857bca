"""A model pass over the batch in rematerialised chunks, so big contrastive batches fit in memory.

The contrastive loss needs the embeddings of the whole global batch at once, but the encoder's
activations need not be kept for all of it: `apply_in_chunks` runs the model on one chunk of
images at a time inside `lax.map`, each chunk under `jax.checkpoint`, so the backward pass keeps
only the chunk's input images and recomputes its activations when it reaches the chunk. Memory
for activations then grows with the chunk, not with the batch, at the price of one more forward
pass. This is the gradient cache of Gao et al. (2021) without its two passes and hand-written
bookkeeping: autodiff through the map gives the exact gradient of whatever loss the caller
computes on the concatenated outputs (the loss still sees every embedding of the global batch).

What does change is BatchNorm in training: each chunk normalises with its own statistics
("ghost batch norm", what per-device BN does with one chunk per device). Chunk k is the images
k, k + K, k + 2K, ... of the batch (K = number of chunks), a strided slice of the global batch:
with the batch split over the devices of the `data` mesh axis in contiguous blocks (and the chunk
size a multiple of the device count), every chunk takes the same number of images from every
device, so all devices work on every chunk and no image moves between devices; and since the
chunks are defined by global indices, the result does not depend on the number of devices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def check_chunk_size(chunk_size: int, batch: int) -> None:
  """ValueError naming chunk_size unless it is a positive int that divides `batch`."""
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  if batch % chunk_size:
    raise ValueError(f"chunk_size={chunk_size} does not divide the batch of {batch} images")


def apply_in_chunks(model: nn.Module, variables: Mapping[str, Any], images: Any,
                    chunk_size: int | None, *, train: bool = True,
                    prepare: Callable[[Any], jax.Array] | None = None) -> tuple[Any, Any]:
  """`model.apply(variables, prepare(images), train=train, mutable=["batch_stats"])`, chunk
  by chunk.

  Args:
    model: a module called as `model(images, train=...)` whose outputs (any pytree) all have
      the image axis first, e.g. SupConModel's {"repr": [N, D], "proj": [N, P]}.
    variables: {"params": ..., "batch_stats": ...} (batch_stats may be absent).
    images: [N, ...], sharded or not over the batch axis; with `prepare`, any pytree of
      arrays [N, ...], e.g. (a key per image, uint8 images).
    chunk_size: images per chunk, a divisor of N (ValueError otherwise); None: one plain
      `model.apply` on the whole batch, without remat.
    prepare: what makes the model's input of the rows of `images` (the augmentation), row by
      row; it runs inside each chunk, so only one chunk's output of it exists at a time, and
      the backward pass keeps the chunk's `images` (uint8 and keys: smaller than floats) and
      recomputes the rest.
    train: False applies the model once to the whole batch: BatchNorm then uses the running
      averages, so chunking would change no value, and without a backward pass no activation
      is kept anyway.

  Returns:
    (outputs, batch_stats): the outputs of the N images in their input order, and the new
    batch_stats (the input ones when `train` is False). Chunk k holds the images k, k + K,
    k + 2K, ... (K = N / chunk_size). In training each BatchNorm layer normalises every chunk
    with that chunk's mean and biased variance, and every chunk updates the running averages
    from the same input values, ra_k = m * ra + (1 - m) * stat_k (flax's update, m the BN
    momentum); the returned running averages are the mean over chunks of the ra_k. The update
    being affine, that is also one update ra' = m * ra + (1 - m) * mean_k(stat_k) with the mean
    over chunks of the chunk statistics (equal up to float rounding). For the variance this
    is the mean within-chunk variance, which leaves out the variance of the chunk means, so
    it is below the whole batch's variance by exactly that. With chunk_size = N all of this is
    the plain `model.apply`.
  """
  prepare = prepare or (lambda x: x)
  n = jax.tree.leaves(images)[0].shape[0]
  if chunk_size is not None:  # also at inference: a bad setting fails wherever it is first used
    check_chunk_size(chunk_size, n)
  if not train:
    return (model.apply(variables, prepare(images), train=False),
            variables.get("batch_stats", {}))
  if chunk_size is None:
    out, updates = model.apply(variables, prepare(images), train=True, mutable=["batch_stats"])
    return out, updates.get("batch_stats", {})
  num_chunks = n // chunk_size
  # Row i * K + k of the batch goes to chunk k, position i. With the image axis split over D
  # devices and D dividing chunk_size, each device's block of the batch is whole rows i of
  # [chunk_size, K], so the reshape moves nothing; the swap makes the chunk index the mapped
  # axis, which no device splits, and each chunk keeps chunk_size / D images on every device.
  chunks = jax.tree.map(
      lambda a: a.reshape((chunk_size, num_chunks) + a.shape[1:]).swapaxes(0, 1), images)

  def apply_chunk(x):
    out, updates = model.apply(variables, prepare(x), train=True, mutable=["batch_stats"])
    return out, updates.get("batch_stats", {})

  # prevent_cse=False: inside lax.map's loop XLA cannot merge the recomputation with the
  # forward pass, which is what the default guards against.
  out, stats = jax.lax.map(jax.checkpoint(apply_chunk, prevent_cse=False), chunks)
  # [K, C, ...] -> [C, K, ...] -> [N, ...]: the inverse of the layout above, the input order.
  out = jax.tree.map(lambda y: y.swapaxes(0, 1).reshape((n,) + y.shape[2:]), out)
  return out, jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
