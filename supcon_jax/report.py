"""Results on disk and in tables: the one JSON writer, the one Markdown table, comparisons.

  python -m supcon_jax.report --run supcon=/tmp/c10_fast --run simclr=/tmp/c10_simclr \
      --run ce=/tmp/c10_ce --out docs/cifar10_fast

prints the results table and writes `<out>_curves.png` (validation top-1 against wall time:
the kNN monitor, or the classifier's for methods that have one, with the final top-1 marked)
and `<out>_embeddings.png` (each run's embedding.png side by side).

  python -m supcon_jax.report --readme

rewrites the README's demo table from `docs/results/digits.json` (the results.json of
`python -m supcon_jax.main --config=configs/digits.py --workdir=W`, copied from W), so the
README's figures are a run's, never typed.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

import numpy as np
from etils import epath

from supcon_jax import methods, metrics

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
README = os.path.join(_ROOT, "README.md")
DEMO_RESULTS = os.path.join(_ROOT, "docs", "results", "digits.json")
# The README's generated part lies between these lines.
BEGIN = "<!-- digits-demo: begin (python -m supcon_jax.report --readme writes this part) -->"
END = "<!-- digits-demo: end -->"


def save_png(fig: Any, path: str) -> None:
  """A matplotlib figure, laid out, as a PNG at `path` (local or gs://)."""
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png")


def severity_means(block: dict[str, Any]) -> list[float]:
  """Top-1 at each severity of a results.json `robustness` block, averaged over corruptions."""
  return [float(np.mean([row[str(s)] for row in block["top1"].values()]))
          for s in block["severities"]]


def write_atomic(path: str, content: str | bytes) -> None:
  """Writes then renames, so a reader never sees half a file (local or gs://)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  if isinstance(content, bytes):
    tmp.write_bytes(content)
  else:
    tmp.write_text(content)
  tmp.replace(path)


def write_json(path: str, obj: Any) -> None:
  """`obj` as indented JSON, written atomically (`write_atomic`)."""
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table: one header row, then a row of cells (already formatted) per row."""
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def load_results(workdir: str) -> dict[str, Any]:
  """A finished run's results.json, older keys renamed (a transfer run has no metrics.jsonl)."""
  return upgrade_results(json.loads((epath.Path(workdir) / "results.json").read_text()))


def load_run(workdir: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(results.json, metrics.jsonl rows) of a finished run; older results' keys renamed."""
  return load_results(workdir), metrics.read_rows(epath.Path(workdir) / "metrics.jsonl")


def upgrade_results(results: dict[str, Any]) -> dict[str, Any]:
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


def results_table(results: dict[str, dict[str, Any]]) -> str:
  """A Markdown table of each method's results.json values."""
  rows = []
  for name, r in results.items():
    r = upgrade_results(r)
    evaluation, top1, top5 = headline(r)
    rows.append([name, evaluation, f"{top1:.2f}", f"{top5:.2f}",
                 f"{r.get('knn_top1', float('nan')):.2f}", f"{r.get('wall_time_s', 0):.0f}",
                 f"{r.get('epochs', float('nan')):g}", f"{r.get('images_per_sec', 0):,.0f}"])
  return markdown_table(["method", "evaluation", "top-1", "top-5", "kNN top-1",
                         "wall time (s)", "epochs", "images/s"], rows)


def robustness_table(results: dict[str, dict[str, Any]]) -> str:
  """A Markdown table of the runs' corruption robustness (results.json's `robustness`): clean
  top-1, top-1 under corruption averaged over the corruptions at each severity and over all,
  and mCE / relative mCE where the run has a baseline."""
  scored = {name: r["robustness"] for name, r in results.items() if "robustness" in r}
  severities = sorted({s for r in scored.values() for s in r["severities"]})
  rows = []
  for name, r in scored.items():
    means = dict(zip(r["severities"], severity_means(r)))
    at = [means.get(s, float("nan")) for s in severities]
    rows.append([name, f"{r['clean_top1']:.2f}", *(f"{v:.2f}" for v in at),
                 f"{r['mean_top1']:.2f}", f"{r.get('mce', float('nan')):.1f}",
                 f"{r.get('relative_mce', float('nan')):.1f}", r.get("baseline", "")])
  return markdown_table(["method", "clean top-1", *(f"severity {s}" for s in severities),
                         "corrupted top-1", "mCE", "relative mCE", "baseline"], rows)


def run_tables(results: dict[str, dict[str, Any]]) -> str:
  """What a finished experiment reports: the results table, and the robustness table when
  any run was scored under corruption."""
  tables = [results_table(results)]
  if any("robustness" in r for r in results.values()):
    tables.append("Under corruption (top-1 in %; mCE and relative mCE against the baseline, "
                  "in %, lower is better):\n\n" + robustness_table(results))
  return "\n\n".join(tables)


def render_readme(readme: str, results: dict[str, dict[str, Any]]) -> str:
  """`readme` with its part between `BEGIN` and `END` rewritten: the tables of `results`."""
  head, begin, rest = readme.partition(BEGIN)
  _, end, tail = rest.partition(END)
  if not (begin and end):
    raise ValueError(f"the README has no part between {BEGIN} and {END}")
  return f"{head}{BEGIN}\n{run_tables(results)}\n{END}{tail}"


def write_readme(readme: str = README, results: str = DEMO_RESULTS) -> None:
  """Rewrites the generated part of the file `readme` from the results.json `results`."""
  with open(results, encoding="utf-8") as f:
    table = json.load(f)
  with open(readme, encoding="utf-8") as f:
    text = f.read()
  with open(readme, "w", encoding="utf-8") as f:
    f.write(render_readme(text, table))


# The validation curve of a run, by preference: its own classifier (older runs: eval_top1),
# else the kNN monitor.
_CURVES = {"classifier_top1": "classifier", "eval_top1": "classifier", "knn_top1": "kNN"}


def plot_curves(runs: dict[str, str], path: str) -> None:
  """Validation top-1 against wall time for each run, its final top-1 starred."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6, 4), dpi=120)
  ax = fig.add_subplot()
  for name, workdir in runs.items():
    results, rows = load_run(workdir)
    key = next((k for k in _CURVES if any(k in r for r in rows)), None)
    pts = [(r["elapsed_s"], r[key]) for r in rows if key in r and "elapsed_s" in r]
    if pts:
      line, = ax.plot(*zip(*pts), marker=".", label=f"{name} ({_CURVES[key]} top-1)")
      evaluation, top1, _ = headline(results)
      ax.scatter([results["wall_time_s"]], [top1], marker="*", s=80,
                 color=line.get_color(), label=f"{name} final {evaluation} top-1")
  ax.set_xlabel("wall time (s)")
  ax.set_ylabel("validation top-1 (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  save_png(fig, path)


def plot_embeddings(runs: dict[str, str], path: str) -> None:
  """Each run's embedding.png side by side."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5 * len(runs), 5), dpi=120)
  for i, (name, workdir) in enumerate(runs.items()):
    ax = fig.add_subplot(1, len(runs), i + 1)
    with (epath.Path(workdir) / "embedding.png").open("rb") as f:
      ax.imshow(matplotlib.image.imread(f, format="png"))
    ax.set_axis_off()
    ax.set_title(name)
  save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
  """The command line: a table and pictures comparing finished runs, or the README's table."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", metavar="NAME=WORKDIR")
  parser.add_argument("--out", help="prefix of the PNG files")
  parser.add_argument("--embeddings", default="", help="comma list of runs to show side by side")
  parser.add_argument("--readme", nargs="?", const=README, metavar="README",
                      help=f"rewrite the demo table of README (default {README}) from "
                           "--results instead")
  parser.add_argument("--results", default=DEMO_RESULTS, help="with --readme: a results.json")
  args = parser.parse_args(argv)
  if args.readme:
    write_readme(args.readme, args.results)
    print(f"wrote the demo table of {args.readme} from {args.results}")
    return
  if not (args.run and args.out):
    parser.error("--run and --out are required (or --readme)")
  runs = dict(item.split("=", 1) for item in args.run)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  print(results_table({name: load_results(workdir) for name, workdir in runs.items()}))
  plot_curves(runs, args.out + "_curves.png")
  shown = [n for n in args.embeddings.split(",") if n] or list(runs)
  plot_embeddings({n: runs[n] for n in shown}, args.out + "_embeddings.png")


if __name__ == "__main__":
  main()
