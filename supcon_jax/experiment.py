"""`train_and_evaluate(config, workdir)`: one experiment, as a short recipe.

What each method runs, by `config.stage` (the methods are the records of `methods.py`):

  stage      supcon, simclr (evaluation: linear)     ce (evaluation: classifier)
  all        train_encoder  -> linear_evaluation     train_encoder  -> classifier_evaluation
  pretrain   train_encoder                           train_encoder
  linear     restore_encoder -> linear_evaluation    restore_encoder -> linear_evaluation

Every evaluation also reports kNN top-1 on r and draws the embedding picture. `config.method`
may list several methods ("supcon,ce"): each runs in `<workdir>/<method>`, then a table.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from supcon_jax import budget, checkpoint, config as config_lib, data, evaluate
from supcon_jax import methods, metrics, optim, report, sharding, train
from supcon_jax.data import Source
from supcon_jax.evaluate import TrainedEncoder


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs `config.stage` of every method in `config.method`; returns (and writes) results."""
  config_lib.validate(config)
  names = config_lib.method_names(config)
  if len(names) == 1:
    return run_method(config, workdir)
  results = {}
  for name in names:
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.method = name
    results[name] = run_method(sub, os.path.join(workdir, name))
  report.write_json(os.path.join(workdir, "results.json"), results)
  print(report.results_table(results), flush=True)
  return results


def run_method(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """One method's stage, in `workdir`; its results also go to `<workdir>/results.json`."""
  started = time.time()
  _check_writable(workdir)
  method = methods.get(config.method)
  mesh = sharding.make_mesh()
  # Streamed images of mixed sizes get each view's random-resized crop while decoding.
  train_source = _source(config, "train", config.batch_size, mesh,
                         data.Crops(method.views(config), tuple(config.augment.crop_scale)))
  eval_source = _source(config, "eval", config.batch_size, mesh)
  model = method.build_model(config.model, config.data.num_classes)
  results: dict[str, Any] = {"method": method.name, "stage": config.stage}
  if config.stage == "linear":
    encoder = restore_encoder(config, config.pretrain_workdir or workdir, model, train_source,
                              mesh)
  else:
    encoder, training = train_encoder(config, workdir, method, model, train_source,
                                      eval_source, mesh, started)
    results.update(training)
  results["encoder_steps"] = encoder.checkpoint.step
  if config.stage != "pretrain":
    outputs = ("repr", "logits") if method.evaluation == methods.CLASSIFIER else ("repr",)
    eval_out = evaluate.encode(encoder, eval_source.eval_batches(),
                               evaluate.eval_transform(config), outputs=outputs)
    if config.stage == "linear" or method.evaluation == methods.LINEAR:
      results.update(evaluate.linear_evaluation(
          config, encoder, _linear_source(config, train_source, mesh), eval_out, mesh=mesh,
          workdir=workdir))
    else:
      results.update(evaluate.classifier_evaluation(eval_out))
    results["knn_top1"] = evaluate.knn_accuracy(config, encoder, train_source, eval_out)
    if config.embedding_plot and jax.process_index() == 0:
      evaluate.plot_embedding(eval_out["repr"], eval_out["label"],
                              os.path.join(workdir, "embedding.png"),
                              title=f"{method.name}: r on the eval split", seed=config.seed)
  results["wall_time_s"] = time.time() - started
  if jax.process_index() == 0:
    report.write_json(os.path.join(workdir, "results.json"), results)
  logging.info("results: %s", results)
  return results


def train_encoder(config: ml_collections.ConfigDict, workdir: str, method: methods.Method,
                  model: Any, train_source: Source, eval_source: Source,
                  mesh: jax.sharding.Mesh, started: float
                  ) -> tuple[TrainedEncoder, dict[str, Any]]:
  """Trains the model with the method's loss, resuming from `workdir` if it has checkpoints."""
  steps_per_epoch = train_source.steps_per_epoch
  loss_fn = method.loss_fn(config, model, mesh)

  def build(epochs):
    total = max(1, int(epochs * steps_per_epoch))  # as the linear stage: never 0 steps
    tx, schedule = optim.make_optimizer(config.optim, batch_size=config.batch_size,
                                        steps_per_epoch=steps_per_epoch, total_steps=total)
    return total, tx, schedule, train.make_step(loss_fn, tx, mesh)

  total, tx, schedule, step = build(config.epochs)
  rng = jax.random.PRNGKey(config.seed)
  state = _fresh_state(config, method, model, train_source, tx, mesh)
  ckpt = _encoder_checkpointer(config, workdir)
  state = train.resume(state, ckpt)  # refuses a workdir of another run, changing nothing
  if jax.process_index() == 0:  # what the workdir holds, for load_encoder and later stages
    report.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  probe = lambda: budget.measure_step_seconds(step, state, train_source.train_batches(), rng)
  epochs = _decide_epochs(config, workdir, ckpt, started, probe=probe,
                          steps_per_epoch=steps_per_epoch)
  if epochs != config.epochs:
    total, tx, schedule, step = build(epochs)
  _record_schedule(config, ckpt, epochs, steps_per_epoch, total)
  views = method.views(config)
  loop = train.LoopSettings(
      name=method.name, num_steps=total, steps_per_epoch=steps_per_epoch,
      images_per_step=config.batch_size * views, ckpt=ckpt, writer=metrics.Writer(workdir),
      log_every=config.log_every_steps, skip_nonfinite=config.skip_nonfinite, schedule=schedule,
      every_epoch=evaluate.monitor(config, method, model, train_source, eval_source),
      started=started)
  t0 = time.time()
  first = int(state.step)
  with loop.writer:
    state = train.fit(loop, state, step, train_source.train_batches, rng)
  ckpt.close()
  seconds = time.time() - t0
  encoder = TrainedEncoder(model.apply, _variables(state),
                           checkpoint.CheckpointRef(ckpt.directory, total))
  return encoder, {"epochs": epochs, "train_time_s": seconds,
                   "images_per_sec": (total - first) * config.batch_size * views
                                     / max(seconds, 1e-9)}


def _decide_epochs(config, workdir: str, ckpt: checkpoint.Checkpointer, started: float, *,
                   probe, steps_per_epoch: int) -> float:
  """The epochs to train: the config's, or what fits `time_budget_s`, decided once: a resumed
  run keeps the schedule its checkpoint records rather than timing the step again."""
  if not config.time_budget_s:
    return config.epochs
  stored = (ckpt.restored_meta or {}).get("schedule")
  if stored is not None:
    return float(stored["epochs"])
  return budget.plan_epochs(config, workdir, started=started, steps_per_epoch=steps_per_epoch,
                            probe=probe)


def _record_schedule(config, ckpt: checkpoint.Checkpointer, epochs: float,
                     steps_per_epoch: int, total: int) -> None:
  """Logs the learning-rate schedule and stores it with every checkpoint from now on."""
  plan = optim.schedule_plan(config.optim, batch_size=config.batch_size,
                             steps_per_epoch=steps_per_epoch, total_steps=total)
  stored = (ckpt.restored_meta or {}).get("schedule")
  if stored is not None and stored["total_steps"] != total:
    logging.warning("the schedule changes on this resume: %d steps before, %d now (epochs=%g)",
                    stored["total_steps"], total, epochs)
  logging.info("schedule: %d steps (%g epochs), warm-up %d steps%s, peak learning rate %g",
               total, epochs, plan["warmup_steps"],
               " (capped at optim.max_warmup_fraction of the run)" if plan["warmup_capped"]
               else "", plan["peak_lr"])
  ckpt.set_meta(schedule={"epochs": epochs, **plan})


def restore_encoder(config: ml_collections.ConfigDict, workdir: str, model: Any,
                    train_source: Source, mesh: jax.sharding.Mesh) -> TrainedEncoder:
  """The model trained in `workdir`: its newest checkpoint, or `config.pretrain_step`."""
  tx, _ = optim.make_optimizer(config.optim, batch_size=config.batch_size,
                               steps_per_epoch=train_source.steps_per_epoch, total_steps=1)
  state = _fresh_state(config, methods.get(config.method), model, train_source, tx, mesh)
  # Only what restoring depends on must match: the linear stage may train on other data.
  ckpt = _encoder_checkpointer(config, workdir, compare=("model.", "method"))
  state = train.resume(state, ckpt, step=config.pretrain_step or None)
  ckpt.close()
  if int(state.step) == 0:
    raise FileNotFoundError(f"stage=linear needs a trained encoder; no checkpoint in "
                            f"{ckpt.directory}")
  return TrainedEncoder(model.apply, _variables(state),
                        checkpoint.CheckpointRef(ckpt.directory, int(state.step)))


def _fresh_state(config, method, model, train_source, tx, mesh) -> train.TrainState:
  params, batch_stats = train.init_model(model, config.seed, train_source.image_shape, mesh)
  return train.create_state(params, batch_stats, tx, mesh,
                            momentum=method.initial_momentum(config, params, batch_stats))


def _encoder_checkpointer(config, workdir: str, compare=None) -> checkpoint.Checkpointer:
  return checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every_steps=config.checkpoint_every_steps,
                                 keep=config.keep_checkpoints,
                                 meta={"identity": config_lib.identity(config)}, compare=compare)


def _variables(state: train.TrainState) -> dict[str, Any]:
  return {"params": state.params, "batch_stats": state.batch_stats}


def _source(config, split: str, batch: int, mesh, crops: data.Crops = data.Crops()) -> Source:
  return data.make_source(config.data, split=split, global_batch=batch, mesh=mesh,
                          seed=config.seed, crops=crops)


def _linear_source(config, train_source: Source, mesh) -> Source:
  """The training split for the linear classifier: one crop per image, its batch size.

  The pre-training source serves where it matches (same batch, and the device crops).
  """
  if config.linear.batch_size == config.batch_size and not data.crops_on_host(config.data):
    return train_source
  return _source(config, "train", config.linear.batch_size, mesh,
                 data.Crops(1, tuple(config.linear.crop_scale)))


def _check_writable(workdir: str) -> None:
  """Fails before any work, naming the workdir, if it cannot be created or written."""
  probe = epath.Path(workdir) / f".write_test.{jax.process_index()}"
  try:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"workdir {workdir} cannot be written: {e}") from e
