"""Evaluation of a trained model on a split: its outputs, kNN top-1 on r, top-k accuracy,
and the monitor that evaluates during training. The linear classifier of the linear stage is
linear_probe.py's; pictures are plotting.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from supcon_jax import checkpoint, losses, methods, train
from supcon_jax.trained import TrainedModel

Classify = Callable[[dict[str, np.ndarray]], np.ndarray]  # encode()'s outputs -> logits


def encode(model: TrainedModel, batches: Iterator[dict[str, jax.Array]], *,
           outputs: Sequence[str] = ("repr",)) -> dict[str, np.ndarray]:
  """The model's `outputs` (e.g. "repr", "logits") over one evaluation pass, in one program.

  Returns host arrays, each output float32 [N, D], and "label" [N], without padding rows.
  """
  parts = []
  for batch in batches:
    out = {**model.outputs(batch["image"], outputs), "label": batch["label"],
           "mask": batch["mask"]}
    out = jax.tree.map(np.asarray, multihost_utils.process_allgather(out, tiled=True))
    keep = out.pop("mask") > 0
    parts.append({k: v[keep] for k, v in out.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def knn_top1(bank: np.ndarray, bank_labels: np.ndarray, query: np.ndarray,
             query_labels: np.ndarray, *, k: int, temperature: float, num_classes: int) -> float:
  """Weighted cosine kNN (Wu et al. 2018, as in SimCLR/MoCo monitors); top-1 in percent."""
  if not 1 <= k <= len(bank):
    raise ValueError(f"knn.k={k} needs 1 <= k <= the {len(bank)} images of the memory bank")
  bank = jnp.asarray(bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12))
  query = jnp.asarray(query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12))
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
