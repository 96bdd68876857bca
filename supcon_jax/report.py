"""Comparing finished runs, and the README's generated demo tables.

  python -m supcon_jax.report --run supcon=workdirs/c10_fast --run simclr=workdirs/c10_simclr \
      --run ce=workdirs/c10_ce --out docs/cifar10_fast

prints the results table and writes `<out>_curves.png` (validation top-1 against wall time:
the kNN monitor, or the classifier's for methods that have one, with the final top-1 marked)
and `<out>_embeddings.png` (each run's embedding.png side by side).

  python -m supcon_jax.report --readme

rewrites the README's demo table from `docs/results/digits.json` (the results.json of
`python -m supcon_jax.main --config=configs/digits.py --workdir=W`, copied from W), so the
README's figures are a run's, never typed.

  python -m supcon_jax.report --transfer-suite supcon=workdirs/supcon_transfer \
      --transfer-suite ce=workdirs/ce_transfer

prints the transfer suite's table, as the paper's Table 4: a column per dataset (in
configs/transfer.py's order), and for each suite, a folder of transfer workdirs named as the
recipe names the datasets (workdirs/supcon_transfer/food101, ...), a row for the linear
evaluation and one for fine-tuning where its runs have them. `--transfer food101=W1
--transfer dtd=W2 [--encoder supcon]` names one suite's workdirs one by one instead.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from etils import epath

from supcon_jax import config as config_lib
from supcon_jax import metrics, plotting, recipes, results

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


def transfer_datasets() -> tuple[str, ...]:
  """The transfer suite's datasets in the paper's column order (configs/transfer.py's ORDER)."""
  return tuple(config_lib.load_module(recipes.path("transfer")).ORDER)


def load_suite(directory: str) -> dict[str, dict[str, Any]]:
  """{dataset: results.json} of the transfer workdirs in `directory`: its sub-folders that
  hold a results.json, each named by its dataset."""
  found = {sub.name: results.load(str(sub)) for sub in sorted(epath.Path(directory).iterdir())
           if results.exists(str(sub))}
  if not found:
    raise ValueError(f"{directory} holds no transfer workdir: expected {directory}/<dataset>/"
                     f"{results.FILE}, <dataset> one of {', '.join(transfer_datasets())}")
  return found


def transfer_report(suites: dict[str, dict[str, dict[str, Any]]]) -> str:
  """The transfer table of `suites` ({encoder: {dataset: results.json}}) under a line saying
  what it holds: the datasets any suite has, in the paper's order (others after, sorted)."""
  order = transfer_datasets()
  present = {dataset for runs in suites.values() for dataset in runs}
  columns = [d for d in order if d in present] + sorted(present - set(order))
  return ("Transfer: top-1 in % on each dataset's evaluation split (linear: a linear "
          "classifier on the frozen encoder; fine-tuned: the whole network):\n\n"
          + results.transfer_table(suites, columns))


def _transfer_suites(args: argparse.Namespace) -> dict[str, dict[str, dict[str, Any]]]:
  """The suites --transfer-suite and --transfer name; a workdir without results.json yet
  (a run under way) counts as one without figures."""
  suites = {}
  for item in args.transfer_suite or []:
    name, _, directory = item.rpartition("=")
    suites[name or epath.Path(directory).name] = load_suite(directory)
  if args.transfer:
    suites[args.encoder] = {dataset: results.load(w) if results.exists(w) else {}
                            for dataset, w in (item.split("=", 1) for item in args.transfer)}
  return suites


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
  parser.add_argument("--transfer-suite", action="append", metavar="[NAME=]DIR",
                      help="a folder of transfer workdirs, one per dataset (DIR/food101, ...): "
                           "the transfer table's rows NAME (default: DIR's name)")
  parser.add_argument("--transfer", action="append", metavar="DATASET=WORKDIR",
                      help="one transfer workdir of the --encoder suite")
  parser.add_argument("--encoder", default="encoder", help="the --transfer workdirs' row name")
  args = parser.parse_args(argv)
  if args.transfer or args.transfer_suite:
    try:
      print(transfer_report(_transfer_suites(args)))
    except (ValueError, OSError) as e:
      parser.error(str(e))
    return
  if args.readme:
    write_readme(args.readme, args.results)
    print(f"wrote the demo table of {args.readme} from {args.results}")
    return
  if not (args.run and args.out):
    parser.error("--run and --out are required (or --readme, --transfer-suite, --transfer)")
  runs = dict(item.split("=", 1) for item in args.run)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  print(results.results_table({name: results.load(workdir) for name, workdir in runs.items()}))
  plot_curves(runs, args.out + "_curves.png")
  shown = [n for n in args.embeddings.split(",") if n] or list(runs)
  plot_embeddings({n: runs[n] for n in shown}, args.out + "_embeddings.png")


if __name__ == "__main__":
  main()
