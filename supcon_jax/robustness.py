"""Corruption robustness of a trained classifier, as Hendrycks & Dietterich (2019) measure it.

The paper's second headline after accuracy: SupCon's mean corruption error on ImageNet-C is
67.2 against 68.6 for cross-entropy (Table 2). Here the trained model's classifier (the
linear classifier on the frozen encoder for contrastive methods, its own for cross-entropy)
is scored on the evaluation split under each corruption c at severities s = 1..5:

  top-1(c, s), error E(c, s) = 100 - top-1(c, s), and E_clean on the clean split;
  corruption error     CE_c  = sum_s E(c, s) / sum_s E_base(c, s)                 (x 100)
  mCE                        = mean over c of CE_c
  relative CE_c              = sum_s (E(c, s) - E_clean) / sum_s (E_base(c, s) - E_base_clean)
  relative mCE               = mean over c of relative CE_c                        (x 100)

(relative CE_c is undefined where the baseline's error under c does not rise above its
clean error, as on small evaluation sets with mild corruptions: it is NaN, and relative mCE
is the mean over the corruptions where it is defined, listed in `relative_mce_over`)

against a baseline run (Hendrycks & Dietterich use AlexNet; here `robustness.baseline_workdir`,
or, when one experiment runs several methods, the run of `robustness.baseline_method`, by
default the cross-entropy one), over the corruptions
both runs were scored on. Where TFDS has the corrupted dataset (cifar10_corrupted,
imagenet2012_corrupted: the 15 corruptions of the benchmark and 4 extra ones), those images
are read; for any other dataset the ten corruptions of `corruptions.py` are applied on the
device to the evaluation images, with CIFAR-10-C's parameters.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from supcon_jax import corruptions, data, evaluate, results, rngs
from supcon_jax.trained import TrainedModel

# The benchmark's 15 corruptions (the mean corruption error is over these) and the 4 extra
# ones TFDS also holds.
BENCHMARK = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
             "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
             "elastic_transform", "pixelate", "jpeg_compression")
EXTRA = ("gaussian_blur", "saturate", "spatter", "speckle_noise")
# TFDS datasets whose corrupted copy exists: (its name, its split).
TFDS_CORRUPTED = {"cifar10": ("cifar10_corrupted", "test"),
                  "imagenet2012": ("imagenet2012_corrupted", "validation")}

Classify = evaluate.Classify


def uses_tfds(config: Any) -> bool:
  """Whether the evaluation split's corrupted copy is read from TFDS."""
  return config.data.source == "tfds" and config.data.name in TFDS_CORRUPTED


def corruption_names(config: Any) -> tuple[str, ...]:
  """The corruptions this run is scored on: `robustness.corruptions`, else all available."""
  available = BENCHMARK + EXTRA if uses_tfds(config) else corruptions.CORRUPTIONS
  chosen = tuple(config.robustness.corruptions) or available
  unknown = [c for c in chosen if c not in available]
  if unknown:
    raise ValueError(f"config.robustness.corruptions: {unknown} not among the available "
                     f"{', '.join(available)}")
  return chosen


def _corrupted_batches(config: Any, eval_source: data.Source, mesh: jax.sharding.Mesh,
                       name: str, severity: int) -> Iterator[dict[str, jax.Array]]:
  """Evaluation batches of one corruption at one severity (TFDS's copy, or made here)."""
  if uses_tfds(config):
    dataset, split = TFDS_CORRUPTED[config.data.name]
    data_config = copy.deepcopy(config.data)
    data_config.update(name=f"{dataset}/{name}_{severity}", eval_split=split)
    yield from data.make_source(data_config, split="eval", global_batch=config.batch_size,
                                mesh=mesh, seed=config.seed).eval_batches()
    return
  fn = _corrupt_fn(name, severity)
  # A fixed key per corruption, severity and batch: every run corrupts the same images alike.
  key = rngs.draw(rngs.stream(config.seed, "robustness"), severity,
                  corruptions.CORRUPTIONS.index(name))
  for i, batch in enumerate(eval_source.eval_batches()):
    yield {**batch, "image": fn(rngs.draw(key, i), batch["image"])}


@functools.cache  # one compiled function per corruption and severity
def _corrupt_fn(name: str, severity: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
  return jax.jit(lambda key, images: corruptions.corrupt(name, severity, key, images))


def evaluate_corruptions(config: Any, model: TrainedModel, classify: Classify,
                         outputs: tuple[str, ...], eval_source: data.Source,
                         mesh: jax.sharding.Mesh, clean: dict[str, np.ndarray]
                         ) -> tuple[dict[str, Any], dict[tuple[str, int], jax.Array]]:
  """({"clean_top1", "top1": {corruption: {severity: top-1}}, "mean_top1"} in percent, the
  first corrupted evaluation image of each (corruption, severity), for the grid).

  `clean`: `evaluate.encode`'s `outputs` on the clean evaluation split, already computed.
  """
  firsts = {}

  def top1(name: str, severity: int) -> float:
    batches = _corrupted_batches(config, eval_source, mesh, name, severity)
    first = next(batches)
    firsts[name, severity] = first["image"][:1]
    out = evaluate.encode(model, itertools.chain([first], batches), outputs=outputs)
    return evaluate.top_k(classify(out), out["label"])["top1"]

  table = {}
  for name in corruption_names(config):
    table[name] = {str(s): top1(name, s) for s in config.robustness.severities}
    logging.info("robustness: %s top-1 %s", name,  # the console gets the summary below
                 " ".join(f"{v:.1f}" for v in table[name].values()), extra={"console": False})
  values = [v for row in table.values() for v in row.values()]
  result = {"clean_top1": evaluate.top_k(classify(clean), clean["label"])["top1"],
            "top1": table, "mean_top1": float(np.mean(values)),
            "severities": list(config.robustness.severities)}
  logging.info("robustness: top-1 %.2f clean, %.2f under %d corruptions x %d severities",
               result["clean_top1"], result["mean_top1"], len(table), len(result["severities"]))
  return result, firsts


def corruption_errors(result: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
  """CE, mCE, relative CE and relative mCE of `result` against `baseline` (module docstring),
  over the corruptions and severities both were scored on; mCE over the benchmark's 15 of
  them where any are among those, as Hendrycks & Dietterich's mean."""
  shared = [c for c in result["top1"] if c in baseline["top1"]]
  if not shared:
    raise ValueError("the run and its robustness baseline share no corruption")
  ce, relative = {}, {}
  for c in shared:
    severities = [s for s in result["top1"][c] if s in baseline["top1"][c]]
    err = np.array([100.0 - result["top1"][c][s] for s in severities])
    base = np.array([100.0 - baseline["top1"][c][s] for s in severities])
    ce[c] = float(100.0 * err.sum() / base.sum())
    base_drop = (base - (100.0 - baseline["clean_top1"])).sum()
    drop = (err - (100.0 - result["clean_top1"])).sum()
    relative[c] = float(100.0 * drop / base_drop) if base_drop > 0 else float("nan")
  mean_over = [c for c in shared if c in BENCHMARK] or shared
  defined = [c for c in mean_over if np.isfinite(relative[c])]
  return {"corruption_error": ce, "mce": float(np.mean([ce[c] for c in mean_over])),
          "relative_corruption_error": relative,
          "relative_mce": float(np.mean([relative[c] for c in defined])) if defined
                          else float("nan"),
          "mce_over": mean_over, "relative_mce_over": defined}


def load_result(workdir: str) -> dict[str, Any]:
  """The `robustness` block of a finished run's results.json (ValueError if it has none)."""
  finished = results.load(workdir)
  if "robustness" not in finished:
    raise ValueError(f"{workdir}/results.json has no robustness block: run it with "
                     "--config.robustness.enabled=True or --config.stage=robustness")
  return finished["robustness"]


def baseline_path(config: Any, workdir: str) -> str | None:
  """The baseline run to compare with: `robustness.baseline_workdir`, if set and not this."""
  base = config.robustness.baseline_workdir
  if not base or os.path.abspath(base) == os.path.abspath(workdir):
    return None
  return base
