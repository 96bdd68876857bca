"""`train_and_evaluate(config, workdir)`: one experiment, as a short recipe.

What each method runs, by `config.stage` (the methods are the records of `methods.py`):

  stage       supcon, simclr (evaluation: linear)      ce (evaluation: classifier)
  all         train_encoder  -> linear_evaluation      train_encoder  -> classifier_evaluation
  pretrain    train_encoder                            train_encoder
  linear      restore_encoder -> linear_evaluation     restore_encoder -> linear_evaluation
  robustness  restore_encoder + its linear classifier  restore_encoder (own classifier)
              -> robustness_evaluation                 -> robustness_evaluation

`restore_encoder` may take the encoder of another workdir and dataset (`linear.encoder_workdir`:
transfer). Every evaluation also reports kNN top-1 on r and draws the embedding picture; with
`robustness.enabled`, stage all ends with the robustness evaluation too. `config.method` may
list several methods ("supcon,ce"): each runs in `<workdir>/<method>`, then a table (and
the cross-entropy run is the others' robustness baseline).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from supcon_jax import budget, checkpoint, config as config_lib, data, encoder as encoder_lib
from supcon_jax import evaluate, methods, metrics, models, optim, report, robustness, sharding
from supcon_jax import train
from supcon_jax.data import Source
from supcon_jax.evaluate import TrainedEncoder


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs `config.stage` of every method in `config.method`; returns (and writes) results."""
  config_lib.validate(config)
  names = config_lib.method_names(config)
  if len(names) == 1:
    result = run_method(config, workdir)
    _print_tables({config.method: result})
    return result
  results = {}
  for name in names:
    sub = ml_collections.ConfigDict(config.to_dict())
    sub.method = name
    results[name] = run_method(sub, os.path.join(workdir, name))
  _compare_robustness(results, workdir)
  report.write_json(os.path.join(workdir, "results.json"), results)
  _print_tables(results)
  return results


def _print_tables(results: dict[str, dict[str, Any]]) -> None:
  """The run's last lines on the console: its accuracies, and robustness where scored."""
  if jax.process_index() == 0:
    print(report.run_tables(results), flush=True)


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
  results: dict[str, Any] = {"method": method.name, "stage": config.stage}
  if config.stage in ("linear", "robustness"):
    # A transfer run's linear classifier is here, its encoder in linear.encoder_workdir.
    encoder_dir = config.linear.encoder_workdir or workdir
    encoder, method = restore_encoder(config, encoder_dir, mesh)
  else:
    model = method.build_model(config.model, config.data.num_classes)
    encoder, training = train_encoder(config, workdir, method, model, train_source,
                                      eval_source, mesh, started)
    results.update(training)
  results["encoder_steps"] = encoder.checkpoint.step
  if config.stage != "pretrain":
    own = method.evaluation == methods.CLASSIFIER and config.stage != "linear"
    outputs = ("repr", "logits") if own else ("repr",)
    eval_out = evaluate.encode(encoder, eval_source.eval_batches(),
                               evaluate.eval_transform(config), outputs=outputs)
    if own:
      classify = evaluate.own_classifier
      results.update(evaluate.classifier_evaluation(eval_out))
    elif config.stage == "robustness":
      classify = evaluate.restore_linear_classifier(config, workdir, encoder,
                                                    eval_out["repr"].shape[1], mesh)
    else:
      accuracy, classify = evaluate.linear_evaluation(
          config, encoder, _linear_source(config, train_source, mesh), eval_out, mesh=mesh,
          workdir=workdir)
      results.update(accuracy)
    if config.stage != "robustness":
      results["knn_top1"] = evaluate.knn_accuracy(config, encoder, train_source, eval_out)
      if config.embedding_plot and jax.process_index() == 0:
        evaluate.plot_embedding(eval_out["repr"], eval_out["label"],
                                os.path.join(workdir, "embedding.png"),
                                title=f"{method.name}: r on the eval split", seed=config.seed)
    if config.stage == "robustness" or config.robustness.enabled:
      results["robustness"] = robustness_evaluation(config, workdir, encoder, classify, outputs,
                                                    eval_source, mesh, eval_out)
  results["wall_time_s"] = time.time() - started
  if jax.process_index() == 0:
    # A robustness stage adds its block to the finished run's results; the rest stays.
    saved = ({**_previous_results(workdir), "robustness": results["robustness"]}
             if config.stage == "robustness" else results)
    report.write_json(os.path.join(workdir, "results.json"), saved)
  logging.info("results: %s", results, extra={"console": False})  # the table is for people
  return results


def robustness_evaluation(config: ml_collections.ConfigDict, workdir: str,
                          encoder: TrainedEncoder, classify: evaluate.Classify,
                          outputs: tuple[str, ...], eval_source: Source,
                          mesh: jax.sharding.Mesh, clean: dict[str, Any]) -> dict[str, Any]:
  """Top-1 under every corruption and severity; CE and mCE against the baseline run when
  `robustness.baseline_workdir` names one; the severity curve and the corruption grid.
  `clean`: the `outputs` on the clean evaluation split."""
  result, firsts = robustness.evaluate_corruptions(config, encoder, classify, outputs,
                                                   eval_source, mesh, clean)
  baseline = robustness.baseline_path(config, workdir)
  if baseline:
    result.update(robustness.corruption_errors(result, robustness.load_result(baseline)),
                  baseline=baseline)
  if jax.process_index() == 0:
    robustness.plot_severity_curves({config.method: result},
                                    os.path.join(workdir, "robustness.png"))
    robustness.plot_corruption_grid(firsts, os.path.join(workdir, "corruptions.png"))
  return result


def _compare_robustness(results: dict[str, dict[str, Any]], workdir: str) -> None:
  """In a multi-method run, each method's corruption errors against the ce run, and one
  picture of every method's top-1 against severity."""
  scored = {name: r["robustness"] for name, r in results.items() if "robustness" in r}
  if not scored or jax.process_index() != 0:
    return
  if "ce" in scored:
    for name, r in scored.items():
      if name != "ce" and "baseline" not in r:
        r.update(robustness.corruption_errors(r, scored["ce"]), baseline="ce")
        report.write_json(os.path.join(workdir, name, "results.json"), results[name])
  robustness.plot_severity_curves(scored, os.path.join(workdir, "robustness.png"))


def _previous_results(workdir: str) -> dict[str, Any]:
  """The results.json a finished run left, which a robustness stage adds to."""
  path = epath.Path(workdir) / "results.json"
  return report.load_results(workdir) if path.exists() else {}


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
  state = method.initial_state(config, model, tx, train_source.image_shape, mesh)
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
      images_per_step=config.batch_size * views, ckpt=ckpt,
      writer=metrics.Writer(workdir, tensorboard=config.tensorboard),
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


def restore_encoder(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
                    ) -> tuple[TrainedEncoder, methods.Method]:
  """The model trained in `workdir` (its newest checkpoint, or `linear.encoder_step`), and its
  method. It is rebuilt from that run's own config, so it may come from another dataset
  (other classes, image size): transfer."""
  trained = encoder_lib.load_encoder(workdir, step=config.linear.encoder_step or None)
  stem = trained.config.model.stem
  if config.data.image_size < models.resnet.MIN_IMAGE_SIZE[stem]:
    raise ValueError(
        f"config.data.image_size={config.data.image_size} cannot feed the encoder of "
        f"{workdir}: its {stem} stem needs images of at least "
        f"{models.resnet.MIN_IMAGE_SIZE[stem]} pixels a side")
  return TrainedEncoder(trained.model.apply, sharding.replicate(trained.variables, mesh),
                        trained.checkpoint), trained.method


def _encoder_checkpointer(config, workdir: str) -> checkpoint.Checkpointer:
  return checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every_steps=config.checkpoint_every_steps,
                                 keep=config.keep_checkpoints,
                                 meta={"identity": config_lib.identity(config)})


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
