"""Evaluation of a representation: linear evaluation, the kNN monitor, the embedding picture.

Linear evaluation freezes the encoder (BatchNorm in inference mode, no gradient) and trains
only a linear classifier on r. Either each step encodes freshly augmented images
(`linear.augment = "cropflip"`, the paper's protocol), or the representations of the
un-augmented training images are computed once and the classifier trains on that cache
(`linear.augment = "none"`: much faster, slightly weaker).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from supcon_jax import augment, checkpoint, data, losses, methods, metrics, optim, report
from supcon_jax import sharding, train
from supcon_jax.models import heads

LINEAR_POLICIES = ("cropflip", "none")  # config.linear.augment


@dataclasses.dataclass(frozen=True)
class TrainedEncoder:
  """A trained model (any method's), as the evaluations use it."""
  apply: Callable  # model.apply: (variables, images, train) -> {"repr": r, ...}
  variables: Any  # {"params": ..., "batch_stats": ...}
  checkpoint: checkpoint.CheckpointRef  # where these variables were saved


def eval_transform(config: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
  """uint8 evaluation images -> the normalised float32 input of the model (the same function
  for the same statistics, so that `encode` compiles once)."""
  return _eval_transform(tuple(config.data.mean), tuple(config.data.std))


@functools.lru_cache(maxsize=8)
def _eval_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
  return augment.make_eval_transform(mean=mean, std=std)


def encode(encoder: TrainedEncoder, batches: Iterator[dict[str, jax.Array]],
           transform: Callable, *, outputs: Sequence[str] = ("repr",)) -> dict[str, np.ndarray]:
  """The model's `outputs` (e.g. "repr", "logits") over one evaluation pass, in one run.

  Returns host arrays, each output float32 [N, D], and "label" [N], without padding rows.
  """
  fn = _compiled_apply(encoder.apply, transform, tuple(outputs))
  parts = []
  for batch in batches:
    out = {**fn(encoder.variables, batch["image"]), "label": batch["label"],
           "mask": batch["mask"]}
    out = jax.tree.map(np.asarray, multihost_utils.process_allgather(out, tiled=True))
    keep = out.pop("mask") > 0
    parts.append({k: v[keep] for k, v in out.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@functools.lru_cache(maxsize=16)  # one program per model, transform and outputs, not per call
def _compiled_apply(apply: Callable, transform: Callable,
                    outputs: tuple[str, ...]) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
  def fn(variables, images):
    out = apply(variables, transform(images), train=False)
    return {k: out[k].astype(jnp.float32) for k in outputs}
  return jax.jit(fn)


def knn_top1(bank: np.ndarray, bank_labels: np.ndarray, query: np.ndarray,
             query_labels: np.ndarray, *, k: int, temperature: float, num_classes: int) -> float:
  """Weighted cosine kNN (Wu et al. 2018, as in SimCLR/MoCo monitors); top-1 in percent."""
  bank = jnp.asarray(bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12))
  query = jnp.asarray(query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12))
  k = min(k, bank.shape[0])
  bank_onehot = jax.nn.one_hot(jnp.asarray(bank_labels), num_classes)

  @jax.jit
  def predict(q):
    sim, idx = jax.lax.top_k(q @ bank.T, k)
    votes = jnp.einsum("qk,qkc->qc", jnp.exp(sim / temperature), bank_onehot[idx])
    return jnp.argmax(votes, axis=-1)

  preds = np.concatenate([np.asarray(predict(query[i:i + 1024]))
                          for i in range(0, query.shape[0], 1024)])
  return float(100.0 * np.mean(preds == query_labels))


def knn_accuracy(config: ml_collections.ConfigDict, encoder: TrainedEncoder, train_source: Any,
                 eval_out: dict[str, np.ndarray]) -> float:
  """kNN top-1 of the eval split's r against a fixed sample of `config.knn.num_train`."""
  bank = encode(encoder, train_source.eval_batches(max_examples=config.knn.num_train),
                eval_transform(config))
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


def monitor(config: ml_collections.ConfigDict, method: methods.Method, model: Any, train_source: Any,
            eval_source: Any) -> Callable[[int, train.TrainState], dict[str, float]] | None:
  """Every `config.eval_every_epochs` of training: kNN top-1 on r, and classifier top-1 when
  the method has its own classifier (None when switched off)."""
  every = config.eval_every_epochs
  if not every:
    return None
  with_logits = method.evaluation == methods.CLASSIFIER

  def evaluate_now(epoch: int, state: train.TrainState) -> dict[str, float]:
    if epoch % every:
      return {}
    encoder = TrainedEncoder(model.apply, {"params": state.params,
                                           "batch_stats": state.batch_stats},
                             checkpoint.CheckpointRef("", int(state.step)))
    eval_out = encode(encoder, eval_source.eval_batches(), eval_transform(config),
                      outputs=("repr", "logits") if with_logits else ("repr",))
    values = {"knn_top1": knn_accuracy(config, encoder, train_source, eval_out)}
    if with_logits:
      values["classifier_top1"] = classifier_evaluation(eval_out)["classifier_top1"]
    return values

  return evaluate_now


Classify = Callable[[dict[str, np.ndarray]], np.ndarray]  # encode()'s outputs -> logits


def own_classifier(out: dict[str, np.ndarray]) -> np.ndarray:
  """The logits of a model with its own classifier (encode with outputs=("repr", "logits"))."""
  return out["logits"]


def _linear_state(config: ml_collections.ConfigDict, feat_dim: int, mesh: jax.sharding.Mesh,
                  steps_per_epoch: int, total: int):
  """(classifier, fresh state, optimiser, schedule) of the linear stage."""
  lin = config.linear
  classifier = heads.LinearClassifier(num_classes=config.data.num_classes)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)  # independent of pre-training
  params = jax.jit(lambda r: classifier.init(r, jnp.zeros((1, feat_dim))),
                   out_shardings=sharding.replicated(mesh))(rng)["params"]
  tx, schedule = optim.make_optimizer(lin.optim, batch_size=lin.batch_size,
                                      steps_per_epoch=steps_per_epoch, total_steps=total)
  return classifier, train.create_state(params, {}, tx, mesh), tx, schedule


def _linear_checkpointer(config: ml_collections.ConfigDict, workdir: str,
                         encoder: TrainedEncoder, feat_dim: int
                         ) -> tuple[str, checkpoint.Checkpointer]:
  """(the stage's directory, its checkpointer), keyed by the encoder's step."""
  stage_dir = os.path.join(workdir, "linear", str(encoder.checkpoint.step))
  return stage_dir, checkpoint.Checkpointer(
      os.path.join(stage_dir, "checkpoints"), every_steps=config.checkpoint_every_steps,
      keep=config.keep_checkpoints,
      meta={"identity": {"linear_on": feat_dim, "encoder": str(encoder.checkpoint)}})


def _linear_logits(classifier: heads.LinearClassifier, params: Any) -> Classify:
  params = jax.device_get(params)
  return lambda out: np.asarray(classifier.apply({"params": params}, out["repr"]))


def linear_evaluation(config: ml_collections.ConfigDict, encoder: TrainedEncoder,
                      train_source: Any, eval_out: dict[str, np.ndarray], *,
                      mesh: jax.sharding.Mesh,
                      workdir: str) -> tuple[dict[str, float], Classify]:
  """Trains a linear classifier on the frozen r: (linear_top1 / linear_top5 on the eval split,
  the classifier's logits function).

  Its checkpoints and metrics live in `<workdir>/linear/<encoder step>/`, and its checkpoints
  record the encoder's, so a classifier is never resumed on another encoder.
  """
  lin = config.linear
  feat_dim = eval_out["repr"].shape[1]
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)  # independent of pre-training
  steps_per_epoch = train_source.steps_per_epoch
  total = max(1, int(lin.epochs * steps_per_epoch))
  classifier, state, tx, schedule = _linear_state(config, feat_dim, mesh, steps_per_epoch, total)
  stage_dir, ckpt = _linear_checkpointer(config, workdir, encoder, feat_dim)
  state = train.resume(state, ckpt)

  def ce(params, r, labels):
    return losses.cross_entropy_loss(classifier.apply({"params": params}, r), labels)

  if lin.augment == "none":
    cache = encode(encoder, train_source.eval_batches(), eval_transform(config))
    batches = _feature_batches(cache, lin.batch_size, config.seed, mesh)
    loss_fn = lambda p, bs, batch, rng: (ce(p, batch["repr"], batch["label"]), bs)
    frozen = ()
  else:
    # One random-resized crop (here or, for streamed images of mixed sizes, on the host) + flip.
    aug = augment.from_config(config, policy=lin.augment, n_views=1, crop_scale=lin.crop_scale,
                              host_cropped=data.crops_on_host(config.data))

    def loss_fn(p, bs, batch, rng, enc_vars):
      r = encoder.apply(enc_vars, aug(rng, batch["image"])[:, 0], train=False)["repr"]
      return ce(p, jax.lax.stop_gradient(r), batch["label"]), bs

    batches, frozen = train_source.train_batches, (encoder.variables,)

  loop = train.LoopSettings(name="linear", num_steps=total, steps_per_epoch=steps_per_epoch,
                            images_per_step=lin.batch_size, ckpt=ckpt,
                            writer=metrics.Writer(stage_dir, tensorboard=config.tensorboard),
                            log_every=config.log_every_steps,
                            skip_nonfinite=config.skip_nonfinite, schedule=schedule)
  with loop.writer:
    state = train.fit(loop, state, train.make_step(loss_fn, tx, mesh), batches, rng, *frozen)
  ckpt.close()
  classify = _linear_logits(classifier, state.params)
  accuracy = top_k(classify(eval_out), eval_out["label"])
  return {f"linear_{k}": v for k, v in accuracy.items()}, classify


def restore_linear_classifier(config: ml_collections.ConfigDict, workdir: str,
                              encoder: TrainedEncoder, feat_dim: int,
                              mesh: jax.sharding.Mesh) -> Classify:
  """The linear classifier trained on `encoder` in `workdir`, as a logits function."""
  classifier, state, _, _ = _linear_state(config, feat_dim, mesh, 1, 1)
  _, ckpt = _linear_checkpointer(config, workdir, encoder, feat_dim)
  state = train.resume(state, ckpt)
  ckpt.close()
  if int(state.step) == 0:
    raise FileNotFoundError(f"no linear classifier of encoder step {encoder.checkpoint.step} in "
                            f"{ckpt.directory}: run --config.stage=all (or linear) first")
  return _linear_logits(classifier, state.params)


def _feature_batches(cache: dict[str, np.ndarray], batch_size: int, seed: int,
                     mesh: jax.sharding.Mesh) -> Callable[[int], Iterator[dict]]:
  """A resumable stream of shuffled batches of cached (r, label), drawn on the device."""
  feats, labels = sharding.replicate((cache["repr"], cache["label"].astype(np.int32)), mesh)
  take = jax.jit(lambda idx: {"repr": feats[idx], "label": labels[idx]},
                 out_shardings=sharding.batch_sharding(mesh))
  n = cache["repr"].shape[0]
  per_epoch = n // batch_size  # the cache can be short of num_examples if images were skipped

  def stream(start_step: int) -> Iterator[dict]:
    step, epoch, order = start_step, None, None
    while True:
      if step // per_epoch != epoch:
        epoch = step // per_epoch
        order = np.random.default_rng((seed, epoch)).permutation(n)
      pos = step % per_epoch
      yield take(order[pos * batch_size:(pos + 1) * batch_size])
      step += 1

  return stream


def embed_2d(x: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, str]:
  """2-D coordinates of the rows of `x`: t-SNE, or PCA where scikit-learn is not installed."""
  try:
    from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  except ImportError:
    centred = x - x.mean(axis=0)
    return centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T, "PCA"
  return TSNE(n_components=2, init="pca", random_state=seed,
              perplexity=min(30.0, (len(x) - 1) / 3)).fit_transform(x), "t-SNE"


def plot_embedding(features: np.ndarray, labels: np.ndarray, path: str, *, title: str = "",
                   max_points: int = 2000, seed: int = 0) -> str | None:
  """Saves a 2-D picture of `features` coloured by class as a PNG; returns its path.

  Returns None (with a warning) where matplotlib is not installed: a missing picture must
  not fail a finished run.
  """
  try:
    # A bare Figure, not pyplot: no global backend switch (notebooks keep theirs).
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("matplotlib is not installed: no embedding picture")
    return None
  idx = np.random.default_rng(seed).permutation(len(features))[:max_points]
  x = features[idx] / np.maximum(np.linalg.norm(features[idx], axis=1, keepdims=True), 1e-12)
  xy, how = embed_2d(x, seed=seed)
  fig = Figure(figsize=(5, 5), dpi=120)
  ax = fig.add_subplot()
  sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels[idx], cmap="tab10", s=4)
  ax.legend(*sc.legend_elements(), loc="best", fontsize=6, markerscale=0.6)
  ax.set_title(f"{title or 'r'} ({how})")
  ax.set_xticks([])
  ax.set_yticks([])
  report.save_png(fig, path)
  logging.info("embedding picture: %s", path)
  return path
