"""Compares finished runs: a results table, accuracy against wall time, embeddings side by side.

  python -m supcon_jax.report --run supcon=/tmp/c10_fast --run simclr=/tmp/c10_simclr \
      --run ce=/tmp/c10_ce --out docs/cifar10_fast

writes `<out>_curves.png` (kNN / validation top-1 against wall time, final linear top-1
marked), `<out>_embeddings.png` (each run's embedding.png side by side) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from etils import epath


def load_run(workdir: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(results.json, metrics.jsonl rows) of a finished run."""
  path = epath.Path(workdir)
  results = json.loads((path / "results.json").read_text())
  rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line]
  return results, rows


def table(results: dict[str, dict[str, Any]]) -> str:
  """A Markdown table of each method's results.json values."""
  lines = ["| method | top-1 | top-5 | kNN top-1 | wall time (s) | epochs | images/s |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for name, r in results.items():
    nan = float("nan")  # a stage=pretrain run has no accuracy yet
    lines.append(f"| {name} | {r.get('linear_eval_top1', nan):.2f} | "
                 f"{r.get('linear_eval_top5', nan):.2f} | {r.get('knn_top1', nan):.2f} | "
                 f"{r.get('wall_time_s', 0):.0f} | "
                 f"{r.get('epochs', nan):g} | {r.get('images_per_sec', 0):,.0f} |")
  return "\n".join(lines)


def plot_curves(runs: dict[str, str], path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6, 4), dpi=120)
  ax = fig.add_subplot()
  for name, workdir in runs.items():
    results, rows = load_run(workdir)
    pts = [(r["elapsed_s"], r.get("knn_top1", r.get("eval_top1"))) for r in rows
           if "elapsed_s" in r and ("knn_top1" in r or "eval_top1" in r)]
    if pts:
      line, = ax.plot(*zip(*pts), marker=".", label=f"{name} (kNN / eval top-1)")
      ax.scatter([results["wall_time_s"]], [results["linear_eval_top1"]], marker="*", s=80,
                 color=line.get_color(), label=f"{name} final top-1")
  ax.set_xlabel("wall time (s)")
  ax.set_ylabel("validation top-1 (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png")


def plot_embeddings(runs: dict[str, str], path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5 * len(runs), 5), dpi=120)
  for i, (name, workdir) in enumerate(runs.items()):
    ax = fig.add_subplot(1, len(runs), i + 1)
    with (epath.Path(workdir) / "embedding.png").open("rb") as f:
      ax.imshow(matplotlib.image.imread(f, format="png"))
    ax.set_axis_off()
    ax.set_title(name)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, format="png")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", required=True, metavar="NAME=WORKDIR")
  parser.add_argument("--out", required=True, help="prefix of the PNG files")
  parser.add_argument("--embeddings", default="", help="comma list of runs to show side by side")
  args = parser.parse_args(argv)
  runs = dict(item.split("=", 1) for item in args.run)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  print(table({name: load_run(workdir)[0] for name, workdir in runs.items()}))
  plot_curves(runs, args.out + "_curves.png")
  shown = [n for n in args.embeddings.split(",") if n] or list(runs)
  plot_embeddings({n: runs[n] for n in shown}, args.out + "_embeddings.png")


if __name__ == "__main__":
  main()
