"""A momentum encoder and a queue of past embeddings with their labels (`config.moco`).

The variant behind the SupCon reference's best ImageNet result, after MoCo (He et al. 2020):
a key model (encoder + head) that is an exponential moving average of the trained one and
gets no gradients, and a first-in-first-out queue of its normalised embeddings of past
batches with their labels. The loss contrasts every anchor against the current batch and
the whole queue (`losses.supcon_loss(..., extra=queue, extra_labels=...)`): queue entries
with the anchor's label are positives (none for SimCLR, which with a queue is MoCo-like),
and queue entries are never anchors. It lets small batches see many negatives and positives.

The state lives in `train.MomentumTrainState.momentum`, replicated on every device and
checkpointed with the rest: {"params", "batch_stats"} of the key model, "queue" [K, D],
"queue_labels" [K] (-1 for the initial random entries, which match no label) and
"queue_next", where the next keys go. Each step writes the keys of the whole global batch
(every view, sample-major) at "queue_next", so K must be a multiple of batch x views.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from supcon_jax import rngs
from supcon_jax.models.heads import l2_normalize


def check_config(config: Any) -> None:
  """ValueError naming the field when `config.moco` cannot work with this batch."""
  m = config.moco
  if not 0.0 <= m.momentum < 1.0:
    raise ValueError(f"config.moco.momentum={m.momentum!r} must be in [0, 1)")
  per_step = config.batch_size * config.augment.n_views
  if m.queue_size <= 0 or m.queue_size % per_step:
    raise ValueError(f"config.moco.queue_size={m.queue_size!r} must be a positive multiple of "
                     f"batch_size x augment.n_views = {per_step} (the keys of one step)")


def initial_state(config: Any, params: Any, batch_stats: Any) -> dict[str, Any]:
  """The key model as a copy of the trained one, and a queue of random unit vectors."""
  key = rngs.stream(config.seed, "queue")
  queue = l2_normalize(jax.random.normal(key, (config.moco.queue_size, config.model.proj_dim)))
  return {"params": jax.tree.map(jnp.copy, params),
          "batch_stats": jax.tree.map(jnp.copy, batch_stats), "queue": queue,
          "queue_labels": jnp.full((config.moco.queue_size,), -1, jnp.int32),
          "queue_next": jnp.zeros((), jnp.int32)}


def follow(key_params: Any, params: Any, momentum: float) -> Any:
  """The key model's parameters one step on: m * key + (1 - m) * trained, no gradient."""
  return jax.tree.map(lambda k, q: momentum * k + (1.0 - momentum) * jax.lax.stop_gradient(q),
                      key_params, params)


def enqueue(state: dict[str, Any], keys: jax.Array, labels: jax.Array) -> dict[str, Any]:
  """The queue with `keys` [n, D] and their `labels` [n] written at "queue_next" (FIFO).

  The oldest entries are overwritten; K is a multiple of n, so a step never wraps midway.
  """
  n, size = keys.shape[0], state["queue"].shape[0]
  at = state["queue_next"]
  return {**state,
          "queue": jax.lax.dynamic_update_slice(state["queue"], jax.lax.stop_gradient(
              keys.astype(state["queue"].dtype)), (at, 0)),
          "queue_labels": jax.lax.dynamic_update_slice(state["queue_labels"],
                                                       labels.astype(jnp.int32), (at,)),
          "queue_next": (at + n) % size}
