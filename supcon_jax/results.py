"""A run's `results.json`: what each stage measured, kept as stages come and go, and its tables.

Results only grow: every stage merges its figures into the workdir's results.json
(`merge`), so a re-run, a later stage (robustness) or a later linear evaluation never drops a
figure an earlier stage measured; a figure is only replaced by a new measurement of itself.
Who writes what:

  training (stage all / pretrain, when it trains steps): epochs, train_time_s,
      images_per_sec, input_wait_fraction, encoder_steps; wall_time_s (of the whole
      process) when it trained any step, its linear stage's included
  evaluation (all, linear): linear_top1/5 (contrastive methods, or any stage linear) or
      classifier_top1/5 (ce's own classifier), knn_top1, knn_full_top1 (knn.full_bank:
      the kNN over the whole training split), probe_top1/5 (with an online probe),
      encoder_steps; a stage linear that trained its classifier also
      linear_time_s; a transfer also encoder_workdir
  a stage that trained on some of the labels (data.label_fraction / data.label_list,
      data/labelled.py): its linear_* and finetune_* figures, with label_fraction,
      labelled_examples and label_list, go into the block `labelled`, under the subset's
      tag ("fraction0.1"), never over the figures of the stages that used every label
  fine-tuning (stage finetune): finetune_top1/5, finetune_knn_top1 (finetune_knn_full_top1),
      finetune_steps, finetune_epochs, finetune_train_time_s, finetune_images_per_sec,
      finetune_input_wait_fraction, finetune_time_s (of the process), encoder_steps (and
      encoder_workdir) of the encoder it started from
  robustness (robustness.enabled, stage robustness): the `robustness` block
  every stage: method; stage (the stage that produced the headline, never "robustness")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from supcon_jax import corruptions, fileio, methods

FILE = "results.json"
_MISSING = "–"  # a figure the run does not have (a stage that trained nothing, ...)


def exists(workdir: str) -> bool:
  """Whether `workdir` has a results.json."""
  return (epath.Path(workdir) / FILE).exists()


def load(workdir: str) -> dict[str, Any]:
  """The results.json of `workdir`, older keys renamed (`upgrade`)."""
  return upgrade(fileio.read_json(str(epath.Path(workdir) / FILE)))


def merge(workdir: str, figures: dict[str, Any]) -> dict[str, Any]:
  """Writes results.json with `figures` added to what it holds; returns the whole."""
  merged = combine(load(workdir) if exists(workdir) else {}, figures)
  write(workdir, merged)
  return merged


def combine(before: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
  """`before` with `figures` added: a figure replaces only itself, also within the subsets
  of the `labelled` block."""
  merged = {**before, **figures}
  if "labelled" in before and "labelled" in figures:
    merged["labelled"] = {tag: {**before["labelled"].get(tag, {}), **block}
                          for tag, block in {**before["labelled"], **figures["labelled"]}.items()}
  return merged


def _on_subset(key: str) -> bool:
  return key.startswith(("linear_", "finetune_")) or key in (
      "label_fraction", "labelled_examples", "label_list", "stage")


def apart(figures: dict[str, Any], tag: str) -> dict[str, Any]:
  """A stage's `figures` with those of a classifier trained on the label subset `tag`
  (linear_*, finetune_*, what the subset was, the stage) moved into the `labelled` block."""
  if not tag:
    return figures
  return {**{k: v for k, v in figures.items() if not _on_subset(k)},
          "labelled": {tag: {k: v for k, v in figures.items() if _on_subset(k)}}}


def write(workdir: str, whole: dict[str, Any]) -> None:
  """Writes `whole` as the results.json of `workdir` (atomically): it must hold every figure
  the file held (`merge` makes such a whole)."""
  fileio.write_json(str(epath.Path(workdir) / FILE), whole)


def upgrade(results: dict[str, Any]) -> dict[str, Any]:
  """A results.json written before the evaluations were named, with today's keys.

  `linear_eval_top1/5` held what stage "all" evaluated: the linear classifier, or the model's
  own classifier for methods that have one.
  """
  if "linear_eval_top1" not in results:
    return results
  out = dict(results)
  evaluation = methods.get(out["method"]).evaluation if "method" in out else methods.LINEAR
  for k in ("top1", "top5"):
    out[f"{evaluation}_{k}"] = out.pop(f"linear_eval_{k}")
  return out


def headline(results: dict[str, Any]) -> tuple[str, float, float]:
  """(evaluation, top-1, top-5) of a run: its linear evaluation, else its own classifier."""
  for evaluation in ("linear", "classifier"):
    if f"{evaluation}_top1" in results:
      return evaluation, results[f"{evaluation}_top1"], results[f"{evaluation}_top5"]
  nan = float("nan")  # a stage=pretrain run has no accuracy
  return "none", nan, nan


def severity_means(block: dict[str, Any]) -> list[float]:
  """Top-1 at each severity of a `robustness` block, averaged over the benchmark's
  corruptions (the extras apart; NaN where it has none of the benchmark's)."""
  rows = [row for c, row in block["top1"].items() if c in corruptions.BENCHMARK]
  return [float(np.mean([row[str(s)] for row in rows])) if rows else math.nan
          for s in block["severities"]]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table: one header row, then a row of cells (already formatted) per row."""
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def _cell(value: Any, spec: str) -> str:
  """`value` formatted, or "–" where the run has no such figure (missing, NaN)."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return _MISSING
  return format(value, spec)


def results_table(results: dict[str, dict[str, Any]]) -> str:
  """A Markdown table of each method's results.json values ("–" where a run has none); the
  wall time is the training run's, or a linear-only run's (a transfer)."""
  probed = any("probe_top1" in r for r in results.values())  # its column only where one is
  full = any("knn_full_top1" in r for r in results.values())  # likewise
  tuned = any("finetune_top1" in r for r in results.values())
  rows = []
  for name, r in results.items():
    r = upgrade(r)
    evaluation, top1, top5 = headline(r)
    rows.append([name, evaluation, _cell(top1, ".2f"), _cell(top5, ".2f"),
                 _cell(r.get("knn_top1"), ".2f"),
                 *([_cell(r.get("knn_full_top1"), ".2f")] if full else []),
                 *([_cell(r.get("probe_top1"), ".2f")] if probed else []),
                 *([_cell(r.get("finetune_top1"), ".2f")] if tuned else []),
                 _cell(r.get("wall_time_s", r.get("linear_time_s")), ".0f"),
                 _cell(r.get("epochs"), "g"), _cell(r.get("images_per_sec"), ",.0f")])
  return markdown_table(["method", "evaluation", "top-1", "top-5", "kNN top-1",
                         *(["full-bank kNN top-1"] if full else []),
                         *(["online probe top-1"] if probed else []),
                         *(["fine-tuned top-1"] if tuned else []),
                         "wall time (s)", "epochs", "images/s"], rows)


def labelled_table(results: dict[str, dict[str, Any]]) -> str:
  """A Markdown table of the runs' classifiers trained on some of the labels (the
  `labelled` block): a row per method and subset."""
  rows = []
  for name, r in results.items():
    for block in r.get("labelled", {}).values():
      listed = f"{epath.Path(block['label_list']).name}: " if block.get("label_list") else ""
      labels = f"{listed}{100 * block['label_fraction']:.3g}% ({block['labelled_examples']})"
      rows.append([name, labels, _cell(block.get("linear_top1"), ".2f"),
                   _cell(block.get("finetune_top1"), ".2f")])
  return markdown_table(["method", "labels", "linear top-1", "fine-tuned top-1"], rows)


# The transfer table's rows for each encoder: (evaluation, the results.json figure).
TRANSFER_ROWS = (("linear", "linear_top1"), ("fine-tuned", "finetune_top1"))


def transfer_table(suites: dict[str, dict[str, dict[str, Any]]], datasets: Sequence[str]
                   ) -> str:
  """A Markdown table like the paper's Table 4: a column per dataset of `datasets`, in that
  order, and for each suite (an encoder's {dataset: results.json of its transfer run}) a row
  per evaluation of `TRANSFER_ROWS` that any of its runs has: top-1 in % to one decimal, as
  the paper prints it, "–" where a run lacks the figure or the suite the dataset."""
  rows = [[suite, evaluation, *(_cell(runs.get(d, {}).get(key), ".1f") for d in datasets)]
          for suite, runs in suites.items() for evaluation, key in TRANSFER_ROWS
          if any(key in r for r in runs.values())]
  return markdown_table(["encoder", "evaluation", *datasets], rows)


def _robustness_columns(scored: dict[str, dict[str, Any]]) -> tuple[bool, bool]:
  """Whether the robustness table has (extras' top-1, AlexNet-normalised mCE) columns."""
  return (any("extra_mean_top1" in r for r in scored.values()),
          any("alexnet_mce" in r for r in scored.values()))


def robustness_table(results: dict[str, dict[str, Any]]) -> str:
  """A Markdown table of the runs' corruption robustness (results.json's `robustness`): clean
  top-1, top-1 under the benchmark's corruptions averaged at each severity and over all,
  the extras' top-1 where any run has it, mCE / relative mCE against the baseline run where
  the run has one, and against AlexNet where any run has those (ImageNet-C)."""
  scored = {name: r["robustness"] for name, r in results.items() if "robustness" in r}
  severities = sorted({s for r in scored.values() for s in r["severities"]})
  extra, alexnet = _robustness_columns(scored)
  rows = []
  for name, r in scored.items():
    means = dict(zip(r["severities"], severity_means(r)))
    rows.append([name, _cell(r["clean_top1"], ".2f"),
                 *(_cell(means.get(s), ".2f") for s in severities),
                 _cell(r["mean_top1"], ".2f"),
                 *([_cell(r.get("extra_mean_top1"), ".2f")] if extra else []),
                 _cell(r.get("mce"), ".1f"), _cell(r.get("relative_mce"), ".1f"),
                 r.get("baseline", _MISSING),
                 *([_cell(r.get("alexnet_mce"), ".1f"), _cell(r.get("alexnet_relative_mce"),
                                                            ".1f")] if alexnet else [])])
  return markdown_table(["method", "clean top-1", *(f"severity {s}" for s in severities),
                         "corrupted top-1", *(["extra top-1"] if extra else []), "mCE",
                         "relative mCE", "baseline",
                         *(["AlexNet mCE", "AlexNet relative mCE"] if alexnet else [])], rows)


def run_tables(results: dict[str, dict[str, Any]]) -> str:
  """What a finished experiment reports: the results table, and the robustness table when
  any run was scored under corruption, under a line saying what each of its figures is
  averaged over and normalised by."""
  tables = [results_table(results)]
  if any("labelled" in r for r in results.values()):
    tables.append("On some of the training labels:\n\n" + labelled_table(results))
  scored = {name: r["robustness"] for name, r in results.items() if "robustness" in r}
  if scored:
    extra, alexnet = _robustness_columns(scored)
    what = ["top-1 in %, averaged over the benchmark's corruptions"]
    if extra:
      what.append("extra top-1 over ImageNet-C's extra corruptions, never in those means")
    what.append("mCE and relative mCE in %, lower is better, normalised by the errors of "
                "the run named under baseline" + (
                    "; AlexNet's by AlexNet's published ImageNet-C errors, as the paper's"
                    if alexnet else " (AlexNet's published errors are ImageNet-C's only)"))
    tables.append(f"Under corruption ({'; '.join(what)}):\n\n" + robustness_table(results))
  return "\n\n".join(tables)
