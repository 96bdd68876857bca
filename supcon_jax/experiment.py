"""`train_and_evaluate(config, workdir)`: one experiment, as a short recipe.

`config.stage` picks one of `STAGES`, each a short function below:

  all         pretrain, then evaluate as the method says (a linear classifier on the frozen r,
              or the model's own classifier), kNN top-1 and the embedding picture; then,
              with robustness.enabled, the scores under corruption
  pretrain    pretrain only
  linear      a trained model (this workdir's, or linear.encoder_workdir's on another
              dataset: transfer) -> a linear classifier on its frozen r, kNN, picture
              (and robustness, when enabled)
  finetune    a trained model (as linear) -> the whole network fine-tuned with a fresh
              linear classifier on this config's dataset (finetune.py), in
              <workdir>/finetune; its top-1/5 and kNN as finetune_* figures
  robustness  a finished run's model and classifier -> scores under corruption

Every stage merges its figures into `<workdir>/results.json` (results.py: results only
grow). `config.method` may list several methods ("supcon,ce"): each runs in
`<workdir>/<method>`, then one table, and the `robustness.baseline_method` run is the others'
robustness baseline. A transfer evaluates the method its encoder was trained with.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from etils import epath

from supcon_jax import (
  budget,
  checkpoint,
  data,
  evaluate,
  fileio,
  finetune,
  linear_probe,
  methods,
  metrics,
  models,
  optim,
  plotting,
  results,
  rngs,
  robustness,
  sharding,
  train,
  trained,
  validation,
)
from supcon_jax import config as config_lib
from supcon_jax.checks import one_of
from supcon_jax.trained import TrainedModel


@dataclasses.dataclass
class Run:
  """One method's run of a stage, as every stage function sees it."""
  config: ml_collections.ConfigDict  # of one method
  workdir: str
  method: methods.Method
  mesh: jax.sharding.Mesh
  started: float
  trained_steps: int = 0  # steps any stage trained in this process (pretraining, linear)
  labelled: bool = False  # trains on the labelled examples only (fine-tuning)

  @functools.cached_property
  def train_source(self) -> data.Source:
    # Streamed images of mixed sizes get each view's random-resized crop while decoding.
    a, small = self.config.augment, self.method.small_views(self.config)
    crops = data.Crops(self.method.views(self.config), tuple(a.crop_scale))
    if small:  # multi-crop: the small crops too
      crops = dataclasses.replace(crops, small_views=small, small_size=a.small_size,
                                  small_scale=tuple(a.small_crop_scale))
    if self.labelled:
      return _labelled_source(self, self.config.batch_size, crops)
    return _source(self.config, "train", self.config.batch_size, self.mesh, crops)

  def check_dataset(self, *fields: str, evaluates: bool = True) -> None:
    """Before any work: the splits it reads are listed (a bad image folder fails now, not
    after training), and the batches and k that `fields` name fit the training split."""
    validation.check_dataset(self.config, self.train_source.num_examples, fields)
    if evaluates:
      _ = self.eval_source

  @functools.cached_property
  def eval_source(self) -> data.Source:
    return _source(self.config, "eval", self.config.batch_size, self.mesh)

  @property
  def transfer(self) -> bool:
    """Whether the model comes from another workdir (linear.encoder_workdir)."""
    return bool(self.config.linear.encoder_workdir)


def validate(config: ml_collections.ConfigDict) -> None:
  """Every check of `config` before anything runs: its stage (one of `STAGES`) and its
  fields (validation.py)."""
  one_of("config.stage", config.stage, STAGES)
  validation.validate(config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs `config.stage` of every method in `config.method`; returns (and writes) results."""
  validate(config)
  validation.check_devices(config, jax.device_count())
  if config.stage in ("linear", "finetune", "robustness") and config.linear.encoder_workdir:
    config = _transfer_config(config)  # one run, of the method its encoder was trained with
  names = config_lib.method_names(config)
  if len(names) == 1:
    result = run_method(config, workdir)
    _print_tables({result["method"]: result})
    return result
  per_method = {name: run_method(_one_method(config, name), os.path.join(workdir, name))
                for name in names}
  _compare_robustness(config, per_method, workdir)
  if jax.process_index() == 0:
    results.merge(workdir, per_method)
  _print_tables(per_method)
  return per_method


def run_method(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """One method's stage in `workdir`; returns its results.json after merging its figures."""
  started = time.time()
  _check_writable(workdir)
  before = results.load(workdir) if results.exists(workdir) else {}
  run = Run(config, workdir, methods.get(config.method), sharding.make_mesh(), started)
  figures = {"method": run.method.name, **STAGES[config.stage](run)}
  if run.trained_steps:  # a re-run that trained nothing keeps the time of the one that did
    timed = {"linear": "linear_time_s", "finetune": "finetune_time_s"}.get(config.stage,
                                                                          "wall_time_s")
    figures[timed] = time.time() - started
  # A classifier of some of the labels keeps its figures apart from every label's.
  figures = results.apart(figures, data.labelled.tag(config.data))
  merged = results.combine(before, figures)
  if jax.process_index() == 0:
    results.write(workdir, merged)
  logging.info("results: %s", merged, extra={"console": False})  # the table is for people
  return merged


# ---------------------------------------------------------------------------- the stages

def _all(run: Run) -> dict[str, Any]:
  own = run.method.evaluation == methods.CLASSIFIER
  run.check_dataset("batch_size", "knn.k", *(() if own else ("linear.batch_size",)))
  model, figures = _pretrain(run)
  evaluated, classify, clean = _evaluate(run, model, own_classifier=own)
  return {**figures, **evaluated, "stage": "all", **_robustness_if_enabled(run, model, classify,
                                                                          clean)}


def _pretrain_only(run: Run) -> dict[str, Any]:
  run.check_dataset("batch_size", evaluates=bool(run.config.eval_every_epochs))
  return {**_pretrain(run)[1], "stage": "pretrain"}


def _linear(run: Run) -> dict[str, Any]:
  run.check_dataset("linear.batch_size", "knn.k")
  model = _restore(run)
  evaluated, classify, clean = _evaluate(run, model, own_classifier=False)
  return {**_provenance(run, model), **evaluated, "stage": "linear",
          **_robustness_if_enabled(run, model, classify, clean)}


def _finetune(run: Run) -> dict[str, Any]:
  encoder = _restore(run)
  # Fine-tuned on some of the labels, in a directory of its own (data/labelled.py).
  tuned = Run(finetune.run_config(run.config, encoder.config),
              data.labelled.stage_dir(run.workdir, finetune.SUBDIR, run.config.data),
              methods.get("ce"), run.mesh, run.started, labelled=True)
  validation.check_dataset(run.config, tuned.train_source.num_examples,
                           ("finetune.batch_size", "knn.k"))
  _ = tuned.eval_source
  model, figures = _pretrain(tuned, start_from=encoder)
  evaluated, _, _ = _evaluate(tuned, model, own_classifier=True)
  run.trained_steps += tuned.trained_steps
  if jax.process_index() == 0:  # the fine-tuned model's own record, as any run's
    results.merge(tuned.workdir, {"method": "ce", "stage": "finetune", **figures, **evaluated})
  return {**_provenance(run, encoder), **finetune.figures({**figures, **evaluated}),
          **data.labelled.figures(tuned.train_source)}


def _robustness(run: Run) -> dict[str, Any]:
  model = _restore(run)
  own = run.method.evaluation == methods.CLASSIFIER and not run.transfer
  outputs = ("repr", "logits") if own else ("repr",)
  clean = evaluate.encode(model, run.eval_source.eval_batches(), outputs=outputs)
  classify = (evaluate.own_classifier if own else linear_probe.restore_classifier(
      run.config, run.workdir, model, clean["repr"].shape[1], run.mesh))
  return {"robustness": _score_robustness(run, model, classify, clean)}


STAGES: dict[str, Callable[[Run], dict[str, Any]]] = {
    "all": _all, "pretrain": _pretrain_only, "linear": _linear, "finetune": _finetune,
    "robustness": _robustness}


# ------------------------------------------------------------------- what the stages share

def _pretrain(run: Run, start_from: TrainedModel | None = None
              ) -> tuple[TrainedModel, dict[str, Any]]:
  """Trains the model with the method's loss, resuming from the workdir's checkpoints:
  (the trained model, its training figures; only the steps trained now are timed).
  `start_from`: a trained model whose encoder the run starts from (fine-tuning)."""
  config, source = run.config, run.train_source
  steps_per_epoch = source.steps_per_epoch
  model = run.method.build_model(config, config.data.num_classes)
  loss_fn = run.method.loss_fn(config, model, run.mesh)

  def build(epochs):
    total = max(1, int(epochs * steps_per_epoch))  # as the linear stage: never 0 steps
    tx, schedule = optim.make_optimizer(config.optim, batch_size=config.batch_size,
                                        steps_per_epoch=steps_per_epoch, total_steps=total)
    return total, tx, schedule, train.make_step(loss_fn, tx, run.mesh)

  total, tx, schedule, step = build(config.epochs)
  rng = rngs.stream(config.seed, "pretrain")
  monitor = evaluate.monitor(config, run.method, source, run.eval_source)
  state = run.method.initial_state(config, model, tx, source.image_shape, run.mesh)
  if start_from is not None:
    state = finetune.from_encoder(state, start_from)
  ckpt = _checkpointer(config, run.workdir)
  state = train.resume(state, ckpt)  # refuses a workdir of another run, changing nothing
  if jax.process_index() == 0:  # what the workdir holds, for load_encoder and later stages
    fileio.write_json(os.path.join(run.workdir, trained.CONFIG), config.to_dict())
  probe = lambda: budget.measure_step_seconds(step, state, source.train_batches(), rng)
  epochs = _decide_epochs(config, run.workdir, ckpt, run.started, probe=probe,
                          steps_per_epoch=steps_per_epoch)
  if epochs != config.epochs:
    total, tx, schedule, step = build(epochs)
  _record_schedule(config, ckpt, epochs, steps_per_epoch, total)
  views = run.method.views(config)
  first = int(state.step)
  if first >= total:
    logging.info("[%s] nothing left to train: checkpoint %d in %s ends the run", run.method.name,
                 first, ckpt.directory)
  loop = train.LoopSettings(
      name=run.method.name, num_steps=total, steps_per_epoch=steps_per_epoch,
      images_per_step=config.batch_size * views, ckpt=ckpt,
      writer=metrics.Writer(run.workdir, tensorboard=config.tensorboard),
      log_every=config.log_every_steps, skip_nonfinite=config.skip_nonfinite,
      schedule=schedule, started=run.started, every_epoch=monitor,
      profile=_profile(config, run.workdir))
  t0 = time.time()
  with loop.writer:
    state = train.fit(loop, state, step, source.train_batches, rng)
  ckpt.close()
  seconds = time.time() - t0
  model = TrainedModel(config, {"params": state.params, "batch_stats": state.batch_stats},
                       checkpoint.CheckpointRef(ckpt.directory, total))
  figures = {"encoder_steps": total}
  if total > first:
    run.trained_steps += total - first
    figures.update(epochs=epochs, train_time_s=seconds,
                   images_per_sec=(total - first) * config.batch_size * views
                                  / max(seconds, 1e-9),
                   input_wait_fraction=loop.input_wait_fraction)
  return model, figures


def _evaluate(run: Run, model: TrainedModel, *, own_classifier: bool
              ) -> tuple[dict[str, Any], evaluate.Classify, dict[str, Any]]:
  """The model's accuracy on the evaluation split (its own classifier, or a linear one
  trained on its frozen r), kNN top-1 and the embedding picture: (figures, the classifier's
  logits function, the outputs on the clean split)."""
  config = run.config
  probed = model.method.probed(model.config)  # the config the model was trained with
  outputs = ("repr", "logits") if own_classifier or probed else ("repr",)
  clean = evaluate.encode(model, run.eval_source.eval_batches(), outputs=outputs)
  if own_classifier:
    figures, classify = evaluate.classifier_evaluation(clean), evaluate.own_classifier
  else:
    figures, classify, steps = linear_probe.train_classifier(
        config, model, _linear_source(run), clean, mesh=run.mesh, workdir=run.workdir)
    run.trained_steps += steps
  if probed and not run.transfer:  # a transfer's probe knows the other dataset's classes
    figures.update({f"probe_{k}": v for k, v in evaluate.top_k(clean["logits"],
                                                                clean["label"]).items()})
  figures["knn_top1"] = evaluate.knn_accuracy(config, model, run.train_source, clean)
  figures.update(evaluate.knn_full_accuracy(config, model, run.train_source, clean))
  if config.embedding_plot and jax.process_index() == 0:
    plotting.embedding(clean["repr"], clean["label"], os.path.join(run.workdir, "embedding.png"),
                       title=f"{run.method.name}: r on the eval split", seed=config.seed)
  return figures, classify, clean


def _robustness_if_enabled(run: Run, model: TrainedModel, classify: evaluate.Classify,
                           clean: dict[str, Any]) -> dict[str, Any]:
  if not run.config.robustness.enabled:
    return {}
  return {"robustness": _score_robustness(run, model, classify, clean)}


def _score_robustness(run: Run, model: TrainedModel, classify: evaluate.Classify,
                      clean: dict[str, Any]) -> dict[str, Any]:
  """Top-1 under every corruption and severity; CE and mCE against the baseline run when
  `robustness.baseline_workdir` names one; the severity curve and the corruption grid.
  `clean`: the model's outputs on the clean evaluation split."""
  outputs = tuple(k for k in clean if k != "label")
  block, firsts = robustness.evaluate_corruptions(run.config, model, classify, outputs,
                                                  run.eval_source, run.mesh, clean)
  baseline = robustness.baseline_path(run.config, run.workdir)
  if baseline:
    block.update(robustness.corruption_errors(block, robustness.load_result(baseline)),
                 baseline=baseline)
  if jax.process_index() == 0:
    _plot_severity_curves({run.method.name: block}, os.path.join(run.workdir, "robustness.png"))
    plotting.corruption_grid(firsts, os.path.join(run.workdir, "corruptions.png"))
  return block


def _restore(run: Run) -> TrainedModel:
  """The model trained in the workdir, or in linear.encoder_workdir (transfer): its newest
  checkpoint or linear.encoder_step, on the mesh. It is rebuilt from that run's own config,
  so it may come from another dataset (other classes, image size)."""
  config = run.config
  where = config.linear.encoder_workdir or run.workdir
  model = trained.load_encoder(where, step=config.linear.encoder_step or None)
  stem = model.config.model.stem
  if config.data.image_size < models.resnet.MIN_IMAGE_SIZE[stem]:
    raise ValueError(
        f"config.data.image_size={config.data.image_size} cannot feed the encoder of "
        f"{where}: its {stem} stem needs images of at least "
        f"{models.resnet.MIN_IMAGE_SIZE[stem]} pixels a side")
  logging.info("[%s] the model of %s, checkpoint %d", model.method.name, where, model.step)
  return model.on(run.mesh)


def _provenance(run: Run, model: TrainedModel) -> dict[str, Any]:
  """Which model a linear stage evaluated: its checkpoint step (and workdir, for a transfer)."""
  if run.transfer:
    return {"encoder_steps": model.step, "encoder_workdir": run.config.linear.encoder_workdir}
  return {"encoder_steps": model.step}


def _transfer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of a transfer: the method is the encoder's, whatever config.method says."""
  encoder_workdir = config.linear.encoder_workdir
  method = trained.saved_config(encoder_workdir).method
  if config.method != method:
    logging.warning("config.method=%r is ignored: a transfer evaluates the encoder of %s, "
                    "trained with %s", config.method, encoder_workdir, method)
  return _one_method(config, method)


def _one_method(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  one = ml_collections.ConfigDict(config.to_dict())
  one.method = name
  return one


def _compare_robustness(config: ml_collections.ConfigDict, per_method: dict[str, dict[str, Any]],
                        workdir: str) -> None:
  """In a multi-method run, each method's corruption errors against the
  `robustness.baseline_method` run, and one picture of every method's top-1 against
  severity."""
  scored = {name: r["robustness"] for name, r in per_method.items() if "robustness" in r}
  if not scored or jax.process_index() != 0:
    return
  base = config.robustness.baseline_method
  if base in scored:
    for name, block in scored.items():
      if name != base and "baseline" not in block:
        block.update(robustness.corruption_errors(block, scored[base]), baseline=base)
        results.merge(os.path.join(workdir, name), {"robustness": block})
  _plot_severity_curves(scored, os.path.join(workdir, "robustness.png"))


def _plot_severity_curves(blocks: dict[str, dict[str, Any]], path: str) -> None:
  plotting.severity_curves({name: (b["severities"], b["clean_top1"], results.severity_means(b))
                            for name, b in blocks.items()}, path)


def _print_tables(per_method: dict[str, dict[str, Any]]) -> None:
  """The run's last lines on the console: its accuracies, and robustness where scored."""
  if jax.process_index() == 0:
    print(results.run_tables(per_method), flush=True)


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


def _profile(config, workdir: str) -> train.StepProfile | None:
  steps = config_lib.profile_steps(config)
  return steps and train.StepProfile(steps, os.path.join(workdir, "profile"))


def _checkpointer(config, workdir: str) -> checkpoint.Checkpointer:
  return checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every_steps=config.checkpoint_every_steps,
                                 keep=config.keep_checkpoints,
                                 meta={"identity": config_lib.identity(config)})


def _source(config, split: str, batch: int, mesh, crops: data.Crops = data.Crops()
            ) -> data.Source:
  return data.make_source(config.data, split=split, global_batch=batch, mesh=mesh,
                          seed=config.seed, crops=crops)


def _linear_source(run: Run) -> data.Source:
  """The training split for the linear classifier: one crop per image, its batch size, its
  labelled examples (`_labelled_source`).

  The pre-training source serves where it matches (same batch, the device crops, every label).
  """
  config = run.config
  if (config.linear.batch_size == config.batch_size and not data.crops_on_host(config.data)
      and not data.labelled.in_force(config.data)):
    return run.train_source
  return _labelled_source(run, config.linear.batch_size,
                          data.Crops(1, tuple(config.linear.crop_scale)))


def _labelled_source(run: Run, batch_size: int, crops: data.Crops) -> data.Source:
  """The training split of a stage that trains with labels on top of an encoder (linear,
  finetune): only the examples data.label_fraction / data.label_list keep (all by default),
  batches of `batch_size` with `crops` on the host. The subset is recorded in (or checked
  against) `<run.workdir>/label_subset_<tag>.txt`, so a resume trains on the same one."""
  config = run.config
  source = data.make_source(config.data, split="train", global_batch=batch_size, mesh=run.mesh,
                            seed=config.seed, crops=crops, labelled_only=True)
  if source.labelled is not None:
    if source.num_examples < batch_size:
      raise ValueError(f"a batch of {batch_size} is more than the {source.num_examples} "
                       f"labelled training examples of {source.labelled.rule}: lower the "
                       "stage's batch size or label more examples")
    data.labelled.record(run.workdir, config.data, source.labelled)
  return source


def _check_writable(workdir: str) -> None:
  """Fails before any work, naming the workdir, if it cannot be created or written."""
  probe = epath.Path(workdir) / f".write_test.{jax.process_index()}"
  try:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"workdir {workdir} cannot be written: {e}") from e
