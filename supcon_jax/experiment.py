"""`train_and_evaluate(config, workdir)`: the stages of one experiment, end to end.

supcon / simclr: contrastive pre-training (with a kNN monitor), then linear evaluation of
the frozen encoder. ce: the cross-entropy baseline, evaluated by its own classifier.
`config.method` may list several methods ("supcon,ce"): each runs in `<workdir>/<method>`
and a comparison table is printed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from supcon_jax import augment, budget, checkpoint, config as config_lib, data, evaluate, metrics
from supcon_jax import models, optim, report, sharding, train


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  config_lib.validate(config)
  methods = [m.strip() for m in config.method.split(",")]
  if len(methods) == 1:
    return _run(config, workdir)
  results = {}
  for method in methods:
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.method = method
    results[method] = _run(sub, os.path.join(workdir, method))
  _write_json(os.path.join(workdir, "results.json"), results)
  print(report.table(results), flush=True)
  return results


def _run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  start = time.time()
  _check_writable(workdir)
  mesh = sharding.make_mesh()
  make = lambda split, batch: data.make_source(config.data, split=split, global_batch=batch,
                                               mesh=mesh, seed=config.seed)
  train_source = make("train", config.batch_size)
  eval_source = make("eval", config.batch_size)
  model = models.build_model(config.model, config.method, config.data.num_classes)
  writer = metrics.Writer(workdir)
  eval_transform = augment.make_eval_transform(mean=config.data.mean, std=config.data.std)
  results: dict[str, Any] = {"method": config.method}
  try:
    state, train_info = _pretrain(config, workdir, mesh, model, train_source, eval_source, writer,
                                  start)
    results.update(train_info)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    # A contrastive stage=pretrain evaluates nothing: skip encoding the eval split.
    pretrain_only = config.stage == "pretrain" and config.method != "ce"
    eval_r = None if pretrain_only else evaluate.encode(
        model.apply, variables, eval_source.eval_batches(), eval_transform)
    if config.method == "ce":
      logits = _ce_logits(model, variables, eval_source, eval_transform)
      acc = evaluate.classify_top_k(logits[0], logits[1])
    elif config.stage in ("all", "linear"):
      acc = evaluate.linear_evaluation(
          config, encoder_apply=model.apply, encoder_vars=variables,
          train_source=(train_source if config.linear.batch_size == config.batch_size
                        else make("train", config.linear.batch_size)),
          eval_features=eval_r,
          mesh=mesh, workdir=workdir, writer=writer,
          encoder=f"{train_info['encoder']}/{train_info['pretrain_steps']}")
    else:
      acc = None
    if acc is not None:
      results.update(linear_eval_top1=acc["top1"], linear_eval_top5=acc["top5"])
      results["knn_top1"] = _knn(config, model, variables, train_source, eval_r, eval_transform)
      if config.embedding_plot and jax.process_index() == 0:
        evaluate.plot_embedding(*eval_r, os.path.join(workdir, "embedding.png"),
                                title=f"{config.method}: r on the eval split", seed=config.seed)
  finally:
    writer.close()
  results["wall_time_s"] = time.time() - start
  if jax.process_index() == 0:
    _write_json(os.path.join(workdir, "results.json"), results)
  logging.info("results: %s", results)
  return results


def _check_writable(workdir: str) -> None:
  """Fails before any work, naming the workdir, if it cannot be created or written."""
  probe = epath.Path(workdir) / f".write_test.{jax.process_index()}"
  try:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"workdir {workdir} cannot be written: {e}") from e


def _pretrain(config, workdir, mesh, model, train_source, eval_source, writer, started):
  """Pre-training (or CE training); with stage=linear, only restores its final state."""
  steps_per_epoch = train_source.steps_per_epoch
  loss_fn, views = train.pretrain_loss_fn(config, model, mesh)

  def build(epochs):
    total = max(1, int(epochs * steps_per_epoch))  # as the linear stage: never 0 steps
    tx, schedule = optim.make_optimizer(config.optim, batch_size=config.batch_size,
                                        steps_per_epoch=steps_per_epoch, total_steps=total)
    return total, tx, schedule, train.make_step(loss_fn, tx, mesh)

  total, tx, schedule, step = build(config.epochs)
  rng = jax.random.PRNGKey(config.seed)
  params, batch_stats = train.init_model(model, config.seed, train_source.image_shape, mesh)
  state = train.create_state(params, batch_stats, tx, mesh)
  linear_only = config.stage == "linear" and config.method != "ce"
  source_dir = (config.pretrain_workdir if linear_only else "") or workdir
  meta = json.loads(json.dumps({"model": config.model.to_dict(), "method": config.method}))
  ckpt = checkpoint.Checkpointer(os.path.join(source_dir, "checkpoints"),
                                 every_steps=config.checkpoint_every_steps,
                                 keep=config.keep_checkpoints, meta=meta)
  state = train.resume(state, ckpt, step=(config.pretrain_step or None) if linear_only else None)
  if linear_only:
    if int(state.step) == 0:
      raise FileNotFoundError(f"stage=linear needs a pre-training checkpoint; none in "
                              f"{ckpt.directory}")
    ckpt.close()
    return state, {"pretrain_steps": int(state.step), "encoder": ckpt.directory}
  epochs = config.epochs
  if config.time_budget_s:
    epochs = budget.plan_epochs(
        config, workdir, started=started, steps_per_epoch=steps_per_epoch,
        probe=lambda: budget.measure_step_seconds(step, state, train_source.train_batches(), rng))
    if epochs != config.epochs:
      total, tx, schedule, step = build(epochs)
  loop = train.Loop(
      name=config.method, num_steps=total, steps_per_epoch=steps_per_epoch,
      images_per_step=config.batch_size * views, ckpt=ckpt, writer=writer,
      log_every=config.log_every_steps, skip_nonfinite=config.skip_nonfinite, schedule=schedule,
      every_epoch=_monitor(config, model, train_source, eval_source), started=started)
  t0 = time.time()
  first = int(state.step)
  state = train.fit(loop, state, step, train_source.train_batches, rng)
  ckpt.close()
  seconds = time.time() - t0
  return state, {"pretrain_steps": total, "encoder": ckpt.directory, "epochs": epochs,
                 "train_time_s": seconds,
                 "images_per_sec": (total - first) * config.batch_size * views / max(seconds, 1e-9)}


def _monitor(config, model, train_source, eval_source):
  """Every knn.every_epochs: kNN top-1 on r (contrastive) or eval top-1 (CE)."""
  every = config.knn.every_epochs
  if not every:
    return None
  transform = augment.make_eval_transform(mean=config.data.mean, std=config.data.std)

  def monitor(epoch: int, state: train.TrainState) -> dict[str, float]:
    if epoch % every:
      return {}
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if config.method == "ce":
      return {"eval_top1": evaluate.classify_top_k(*_ce_logits(model, variables, eval_source,
                                                                 transform))["top1"]}
    eval_r = evaluate.encode(model.apply, variables, eval_source.eval_batches(), transform)
    return {"knn_top1": _knn(config, model, variables, train_source, eval_r, transform)}

  return monitor


def _knn(config, model, variables, train_source, eval_r, transform) -> float:
  bank = evaluate.encode(model.apply, variables,
                         train_source.eval_batches(max_examples=config.knn.num_train), transform)
  return evaluate.knn_top1(*bank, *eval_r, k=config.knn.k, temperature=config.knn.temperature,
                           num_classes=config.data.num_classes)


def _ce_logits(model, variables, source, transform) -> tuple[np.ndarray, np.ndarray]:
  fn = lambda v, x, train: {"repr": model.apply(v, x, train=train)["logits"]}
  return evaluate.encode(fn, variables, source.eval_batches(), transform)


def _write_json(path: str, obj: Any) -> None:
  """Writes then renames, so a reader never sees half a file (local or gs://)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
  tmp.replace(path)
