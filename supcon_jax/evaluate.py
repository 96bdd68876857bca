"""Evaluation of a trained model on a split: its outputs, kNN top-1 on r (on a sample of the
training split, or over all of it in blocks), top-k accuracy, and the monitor that evaluates
during training. The linear classifier of the linear stage is linear_probe.py's; pictures are
plotting.py's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from supcon_jax import checkpoint, losses, methods, train
from supcon_jax.trained import TrainedModel, pad_rows

Classify = Callable[[dict[str, np.ndarray]], np.ndarray]  # encode()'s outputs -> logits


def encode(model: TrainedModel, batches: Iterator[dict[str, jax.Array]], *,
           outputs: Sequence[str] = ("repr",)) -> dict[str, np.ndarray]:
  """The model's `outputs` (e.g. "repr", "logits") over one evaluation pass, in one program.

  Returns host arrays, each output float32 [N, D], and "label" [N], without padding rows.
  """
  parts = list(_encoded(model, batches, outputs))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _encoded(model: TrainedModel, batches: Iterator[dict[str, jax.Array]],
             outputs: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
  """`encode`, batch by batch: what a pass over a split too large to hold at once needs."""
  for batch in batches:
    out = {**model.outputs(batch["image"], outputs), "label": batch["label"],
           "mask": batch["mask"]}
    out = jax.tree.map(np.asarray, multihost_utils.process_allgather(out, tiled=True))
    keep = out.pop("mask") > 0
    yield {k: v[keep] for k, v in out.items()}


def _unit(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit length (zero rows stay zero): their dot products are cosines."""
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_top1(bank: np.ndarray, bank_labels: np.ndarray, query: np.ndarray,
             query_labels: np.ndarray, *, k: int, temperature: float, num_classes: int) -> float:
  """Weighted cosine kNN (Wu et al. 2018, as in SimCLR/MoCo monitors); top-1 in percent."""
  if not 1 <= k <= len(bank):
    raise ValueError(f"knn.k={k} needs 1 <= k <= the {len(bank)} images of the memory bank")
  bank, query = jnp.asarray(_unit(bank)), jnp.asarray(_unit(query))
  bank_onehot = jax.nn.one_hot(jnp.asarray(bank_labels), num_classes)

  @jax.jit
  def predict(q):
    sim, idx = jax.lax.top_k(q @ bank.T, k)
    votes = jnp.einsum("qk,qkc->qc", jnp.exp(sim / temperature), bank_onehot[idx])
    return jnp.argmax(votes, axis=-1)

  preds = np.concatenate([np.asarray(predict(query[i:i + 1024]))
                          for i in range(0, query.shape[0], 1024)])
  return float(100.0 * np.mean(preds == query_labels))


def knn_accuracy(config: ml_collections.ConfigDict, model: TrainedModel, train_source: Any,
                 eval_out: dict[str, np.ndarray]) -> float:
  """kNN top-1 of the eval split's r against a fixed sample of `config.knn.num_train`."""
  bank = encode(model, train_source.eval_batches(max_examples=config.knn.num_train))
  return knn_top1(bank["repr"], bank["label"], eval_out["repr"], eval_out["label"],
                  k=config.knn.k, temperature=config.knn.temperature,
                  num_classes=config.data.num_classes)


def knn_predictions(bank: Iterable[tuple[np.ndarray, np.ndarray]], query: np.ndarray, *,
                    k: int, temperature: float, num_classes: int, block_size: int,
                    query_block_size: int | None = None) -> np.ndarray:
  """The weighted cosine kNN's class [Q] for every query row (as `knn_top1` predicts) against
  a memory bank given as (features [n, D], labels [n]) parts of any sizes, e.g. batch by
  batch as a pass over the training split encodes them, never held whole.

  The bank's rows are regrouped into blocks of `block_size` and the queries into blocks of
  `query_block_size` (default: block_size), the last of each padded, so one program serves
  every block; each query keeps its k most similar rows so far, merged with each new block's.
  The memory used is the queries' (and their [Q, k] running neighbours) plus one block
  against one query block, whatever the bank's size.
  """
  query_block_size = query_block_size or block_size
  unit = pad_rows(_unit(np.asarray(query, np.float32)), query_block_size)
  queries = jnp.asarray(unit.reshape(-1, query_block_size, unit.shape[-1]))
  # The k best so far of every query: similarity -inf (no neighbour yet) weighs exp(-inf) = 0.
  sims = jnp.full(queries.shape[:2] + (k,), -jnp.inf, jnp.float32)
  labels = jnp.zeros(queries.shape[:2] + (k,), jnp.int32)
  seen = 0
  for feats, feat_labels in _row_blocks(bank, block_size):
    valid = np.arange(block_size) < len(feats)
    sims, labels = _merge_block(sims, labels, queries,
                                jnp.asarray(pad_rows(_unit(feats), block_size)),
                                jnp.asarray(pad_rows(feat_labels.astype(np.int32), block_size)),
                                jnp.asarray(valid))
    seen += len(feats)
  if not 1 <= k <= seen:
    raise ValueError(f"knn.full_k={k} needs 1 <= k <= the {seen} images of the memory bank")
  preds = np.asarray(_vote(sims, labels, jnp.float32(temperature), num_classes)).reshape(-1)
  return preds[:len(query)]


def _row_blocks(parts: Iterable[tuple[np.ndarray, np.ndarray]], size: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """The rows of `parts`, (features, labels) of any sizes, regrouped in their order into
  blocks of `size` rows; the last block holds what is left."""
  feats, labels, held = [], [], 0
  for f, y in parts:
    feats.append(np.asarray(f, np.float32))
    labels.append(np.asarray(y))
    held += len(f)
    while held >= size:
      f_all, y_all = np.concatenate(feats), np.concatenate(labels)
      yield f_all[:size], y_all[:size]
      feats, labels, held = [f_all[size:]], [y_all[size:]], held - size
  if held:
    yield np.concatenate(feats), np.concatenate(labels)


@jax.jit
def _merge_block(sims: jax.Array, labels: jax.Array, queries: jax.Array, block: jax.Array,
                 block_labels: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The k nearest so far (similarities and labels, [query blocks, rows, k]) of every query
  after one more bank block; `valid` [rows of the block] marks its real (unpadded) rows."""
  k = sims.shape[-1]

  def one_query_block(carry):
    best, best_labels, q = carry
    # HIGHEST: a reported figure, not a monitor; TF32 would move cosines by ~1e-3 on GPUs and
    # with them which of two close neighbours is in the top k.
    new = jnp.where(valid, jnp.matmul(q, block.T, precision=jax.lax.Precision.HIGHEST),
                    -jnp.inf)
    candidates = jnp.concatenate([best, new], axis=1)
    candidate_labels = jnp.concatenate(
        [best_labels, jnp.broadcast_to(block_labels, new.shape)], axis=1)
    top, where = jax.lax.top_k(candidates, k)
    return top, jnp.take_along_axis(candidate_labels, where, axis=1)

  return jax.lax.map(one_query_block, (sims, labels, queries))  # one query block at a time


@functools.partial(jax.jit, static_argnums=3)
def _vote(sims: jax.Array, labels: jax.Array, temperature: jax.Array,
          num_classes: int) -> jax.Array:
  """The class with the most votes exp(sim / temperature) among each query's k neighbours."""

  def one_query_block(carry):
    best, best_labels = carry
    # Shifted by each query's best similarity (top_k sorts it first): the same argmax, and no
    # overflow at small temperatures. A scatter-add, not a one-hot [Q, k, classes] tensor.
    weights = jnp.exp((best - best[:, :1]) / temperature)
    votes = jax.vmap(lambda w, y: jnp.zeros(num_classes, w.dtype).at[y].add(w))(
        weights, best_labels)
    return jnp.argmax(votes, axis=-1)

  return jax.lax.map(one_query_block, (sims, labels))


def knn_full_accuracy(config: ml_collections.ConfigDict, model: TrainedModel, train_source: Any,
                      eval_out: dict[str, np.ndarray]) -> dict[str, float]:
  """With `config.knn.full_bank`, {"knn_full_top1": kNN top-1 of the eval split's r against
  every training image's}, the bank encoded batch by batch as the kNN consumes it; else {}."""
  knn = config.knn
  if not knn.full_bank:
    return {}
  bank = ((part["repr"], part["label"])
          for part in _encoded(model, train_source.eval_batches(), ("repr",)))
  preds = knn_predictions(bank, eval_out["repr"], k=knn.full_k,
                          temperature=knn.full_temperature,
                          num_classes=config.data.num_classes, block_size=knn.block_size)
  return {"knn_full_top1": float(100.0 * np.mean(preds == eval_out["label"]))}


def top_k(logits: np.ndarray | jax.Array, labels: np.ndarray) -> dict[str, float]:
  """Top-1 and top-5 accuracy in percent: {"top1": ..., "top5": ...}."""
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  return {f"top{k}": float(100.0 * losses.topk_accuracy(logits, labels, k=min(k, logits.shape[-1])))
          for k in (1, 5)}


def classifier_evaluation(eval_out: dict[str, np.ndarray]) -> dict[str, float]:
  """The model's own classifier on the eval split: classifier_top1 / classifier_top5."""
  return {f"classifier_{k}": v for k, v in top_k(eval_out["logits"], eval_out["label"]).items()}


def own_classifier(out: dict[str, np.ndarray]) -> np.ndarray:
  """The logits of a model with its own classifier (encode with outputs=("repr", "logits"))."""
  return out["logits"]


def monitor(config: ml_collections.ConfigDict, method: methods.Method, train_source: Any,
            eval_source: Any) -> Callable[[int, train.TrainState], dict[str, float]] | None:
  """Every `config.eval_every_epochs` of training: kNN top-1 on r, and classifier top-1 when
  the method has its own classifier, or probe top-1 with an online probe (None when off)."""
  every = config.eval_every_epochs
  if not every:
    return None
  own = method.evaluation == methods.CLASSIFIER
  with_logits = own or method.probed(config)

  def evaluate_now(epoch: int, state: train.TrainState) -> dict[str, float]:
    if epoch % every:
      return {}
    model = TrainedModel(config, {"params": state.params, "batch_stats": state.batch_stats},
                         checkpoint.CheckpointRef("", int(state.step)))
    eval_out = encode(model, eval_source.eval_batches(),
                      outputs=("repr", "logits") if with_logits else ("repr",))
    values = {"knn_top1": knn_accuracy(config, model, train_source, eval_out)}
    if with_logits:
      values["classifier_top1" if own else "probe_top1"] = top_k(
          eval_out["logits"], eval_out["label"])["top1"]
    return values

  return evaluate_now
