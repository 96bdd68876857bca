"""Comparing finished runs, and the README's generated demo tables.

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
from typing import Any

from etils import epath

from supcon_jax import metrics, plotting, results

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
README = os.path.join(_ROOT, "README.md")
DEMO_RESULTS = os.path.join(_ROOT, "docs", "results", "digits.json")
# The README's generated part lies between these lines.
BEGIN = "<!-- digits-demo: begin (python -m supcon_jax.report --readme writes this part) -->"
END = "<!-- digits-demo: end -->"


def load_run(workdir: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(results.json, metrics.jsonl rows) of a finished run; older results' keys renamed."""
  return results.load(workdir), metrics.read_rows(epath.Path(workdir) / "metrics.jsonl")


def render_readme(readme: str, table: dict[str, dict[str, Any]]) -> str:
  """`readme` with its part between `BEGIN` and `END` rewritten: the tables of `table`."""
  head, begin, rest = readme.partition(BEGIN)
  _, end, tail = rest.partition(END)
  if not (begin and end):
    raise ValueError(f"the README has no part between {BEGIN} and {END}")
  return f"{head}{BEGIN}\n{results.run_tables(table)}\n{END}{tail}"


def write_readme(readme: str = README, results_path: str = DEMO_RESULTS) -> None:
  """Rewrites the generated part of the file `readme` from the results.json `results_path`."""
  with open(results_path, encoding="utf-8") as f:
    table = json.load(f)
  with open(readme, encoding="utf-8") as f:
    text = f.read()
  with open(readme, "w", encoding="utf-8") as f:
    f.write(render_readme(text, table))


# The validation curve of a run, by preference: its own classifier (older runs: eval_top1),
# its online probe, else the kNN monitor.
_CURVES = {"classifier_top1": "classifier", "eval_top1": "classifier",
           "probe_top1": "online probe", "knn_top1": "kNN"}


def plot_curves(runs: dict[str, str], path: str) -> None:
  """Validation top-1 against wall time for each run, its final top-1 starred."""
  curves = {}
  for name, workdir in runs.items():
    finished, rows = load_run(workdir)
    key = next((k for k in _CURVES if any(k in r for r in rows)), None)
    points = [(r["elapsed_s"], r[key]) for r in rows if key in r and "elapsed_s" in r]
    if points:
      evaluation, top1, _ = results.headline(finished)
      curves[name] = {"points": points, "what": _CURVES[key],
                      "final": (finished["wall_time_s"], top1, evaluation)}
  plotting.validation_curves(curves, path)


def plot_embeddings(runs: dict[str, str], path: str) -> None:
  """Each run's embedding.png side by side."""
  plotting.side_by_side({name: (epath.Path(workdir) / "embedding.png").read_bytes()
                         for name, workdir in runs.items()}, path)


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
  print(results.results_table({name: results.load(workdir) for name, workdir in runs.items()}))
  plot_curves(runs, args.out + "_curves.png")
  shown = [n for n in args.embeddings.split(",") if n] or list(runs)
  plot_embeddings({n: runs[n] for n in shown}, args.out + "_embeddings.png")


if __name__ == "__main__":
  main()
