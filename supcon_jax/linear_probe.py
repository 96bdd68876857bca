"""The linear stage: a linear classifier trained on the frozen representation r of a trained
model, as the paper evaluates a representation.

The model stays frozen (BatchNorm in inference mode, no gradient); only the classifier
trains. Either each step encodes freshly augmented images (`linear.augment = "cropflip"`, the
paper's protocol: one random-resized crop and a flip), or the representations of the
un-augmented training images are computed once and the classifier trains on that cache
(`linear.augment = "none"`: much faster, slightly weaker). The classifier's checkpoints and
metrics live in `<workdir>/linear/<the model's step>/`, and its checkpoints record the model's,
so a classifier is never resumed on another model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from supcon_jax import (
  augment,
  checkpoint,
  data,
  evaluate,
  losses,
  metrics,
  optim,
  rngs,
  sharding,
  train,
)
from supcon_jax.models import heads
from supcon_jax.trained import TrainedModel

POLICIES = ("cropflip", "none")  # config.linear.augment


def _state(config: ml_collections.ConfigDict, feat_dim: int, mesh: jax.sharding.Mesh,
           steps_per_epoch: int, total: int):
  """(classifier, fresh state, optimiser, schedule) of the linear stage."""
  lin = config.linear
  classifier = heads.LinearClassifier(num_classes=config.data.num_classes)
  params = jax.jit(lambda r: classifier.init(r, jnp.zeros((1, feat_dim))),
                   out_shardings=sharding.replicated(mesh))(
                       rngs.stream(config.seed, "linear_init"))["params"]
  tx, schedule = optim.make_optimizer(lin.optim, batch_size=lin.batch_size,
                                      steps_per_epoch=steps_per_epoch, total_steps=total)
  return classifier, train.create_state(params, {}, tx, mesh), tx, schedule


def _checkpointer(config: ml_collections.ConfigDict, workdir: str, model: TrainedModel,
                  feat_dim: int, subset: data.labelled.LabelSubset | None = None
                  ) -> tuple[str, checkpoint.Checkpointer]:
  """(the stage's directory, its checkpointer), keyed by the model's step; a classifier of a
  label subset (data.label_fraction / label_list) apart, its checkpoints keyed by the subset."""
  stage_dir = os.path.join(data.labelled.stage_dir(workdir, "linear", config.data),
                           str(model.checkpoint.step))
  encoder = str(model.checkpoint)
  if "://" not in workdir and encoder.startswith(os.path.abspath(workdir) + os.sep):
    encoder = os.path.relpath(encoder, workdir)  # the run's own: the workdir may move
  return stage_dir, checkpoint.Checkpointer(
      os.path.join(stage_dir, "checkpoints"), every_steps=config.checkpoint_every_steps,
      keep=config.keep_checkpoints,
      meta={"identity": {"linear_on": feat_dim, "encoder": encoder,
                         **({"labels": subset.digest()} if subset is not None else {})}})


def _logits(classifier: heads.LinearClassifier, params: Any) -> evaluate.Classify:
  params = jax.device_get(params)
  return lambda out: np.asarray(classifier.apply({"params": params}, out["repr"]))


def train_classifier(config: ml_collections.ConfigDict, model: TrainedModel, train_source: Any,
                     eval_out: dict[str, np.ndarray], *, mesh: jax.sharding.Mesh,
                     workdir: str) -> tuple[dict[str, Any], evaluate.Classify, int]:
  """Trains a linear classifier on the frozen r of `model` (resuming it if it has started):
  (linear_top1 / linear_top5 on the eval split and the labels it trained on, its logits
  function, the steps trained now).
  """
  lin = config.linear
  feat_dim = eval_out["repr"].shape[1]
  steps_per_epoch = train_source.steps_per_epoch
  total = max(1, int(lin.epochs * steps_per_epoch))
  classifier, state, tx, schedule = _state(config, feat_dim, mesh, steps_per_epoch, total)
  stage_dir, ckpt = _checkpointer(config, workdir, model, feat_dim,
                                  getattr(train_source, "labelled", None))
  state = train.resume(state, ckpt)
  first = int(state.step)

  def ce(params, r, labels):
    return losses.cross_entropy_loss(classifier.apply({"params": params}, r), labels)

  if lin.augment == "none":
    cache = evaluate.encode(model, train_source.eval_batches())
    batches = _feature_batches(cache, lin.batch_size, config.seed, mesh)
    loss_fn = lambda p, bs, batch, rng: (ce(p, batch["repr"], batch["label"]), bs)
    frozen = ()
  else:
    # One random-resized crop (here or, for streamed images of mixed sizes, on the host) + flip.
    aug = augment.from_config(config, policy=lin.augment, n_views=1, crop_scale=lin.crop_scale,
                              host_cropped=data.crops_on_host(config.data))

    def loss_fn(p, bs, batch, rng, variables):
      r = model.model.apply(variables, aug(rng, batch["image"])[:, 0], train=False)["repr"]
      return ce(p, jax.lax.stop_gradient(r), batch["label"]), bs

    batches, frozen = train_source.train_batches, (model.variables,)

  loop = train.LoopSettings(name="linear", num_steps=total, steps_per_epoch=steps_per_epoch,
                            images_per_step=lin.batch_size, ckpt=ckpt,
                            writer=metrics.Writer(stage_dir, tensorboard=config.tensorboard),
                            log_every=config.log_every_steps,
                            skip_nonfinite=config.skip_nonfinite, schedule=schedule)
  with loop.writer:
    state = train.fit(loop, state, train.make_step(loss_fn, tx, mesh), batches,
                      rngs.stream(config.seed, "linear"), *frozen)
  ckpt.close()
  classify = _logits(classifier, state.params)
  accuracy = evaluate.top_k(classify(eval_out), eval_out["label"])
  figures = {**{f"linear_{k}": v for k, v in accuracy.items()},
             **data.labelled.figures(train_source)}
  return figures, classify, total - first


def restore_classifier(config: ml_collections.ConfigDict, workdir: str, model: TrainedModel,
                       feat_dim: int, mesh: jax.sharding.Mesh) -> evaluate.Classify:
  """The linear classifier trained on `model` in `workdir`, as a logits function."""
  classifier, state, _, _ = _state(config, feat_dim, mesh, 1, 1)
  _, ckpt = _checkpointer(config, workdir, model, feat_dim)
  state = train.resume(state, ckpt, to_continue=False)  # only read, never trained further
  ckpt.close()
  if int(state.step) == 0:
    raise FileNotFoundError(f"no linear classifier of encoder step {model.checkpoint.step} in "
                            f"{ckpt.directory}: run --config.stage=all (or linear) first")
  return _logits(classifier, state.params)


def _feature_batches(cache: dict[str, np.ndarray], batch_size: int, seed: int,
                     mesh: jax.sharding.Mesh) -> Callable[[int], Iterator[dict]]:
  """A resumable stream of shuffled batches of cached (r, label), drawn on the device; epoch
  e's order is drawn from the run's "linear_data" stream at e."""
  feats, labels = sharding.replicate((cache["repr"], cache["label"].astype(np.int32)), mesh)
  take = jax.jit(lambda idx: {"repr": feats[idx], "label": labels[idx]},
                 out_shardings=sharding.batch_sharding(mesh))
  n = cache["repr"].shape[0]
  per_epoch = n // batch_size  # the cache can be short of num_examples if images were skipped
  key = rngs.stream(seed, "linear_data")
  order_of = jax.jit(lambda epoch: jax.random.permutation(rngs.draw(key, epoch), n))

  def stream(start_step: int) -> Iterator[dict]:
    step, epoch, order = start_step, None, None
    while True:
      if step // per_epoch != epoch:
        epoch = step // per_epoch
        order = np.asarray(order_of(epoch))
      pos = step % per_epoch
      yield take(order[pos * batch_size:(pos + 1) * batch_size])
      step += 1

  return stream
