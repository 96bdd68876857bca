"""Writes the measured part of docs/performance.md from a speed JSON, so no figure is typed.

  python -m benchmarks.render_performance docs/speed_gpu.json            # rewrites the doc
  python -m benchmarks.render_performance OUT/speed.json --out OUT/performance.md

The JSON is what `python -m benchmarks.speed --suite reference --json ...` writes (the GPU
acceptance script runs it). Only the text between the two marker lines of the doc is
replaced: the environment, the command, a comparison with the PyTorch reference and its
targets, and every row in full.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from benchmarks import speed
from supcon_jax import results

BEGIN = "<!-- measured: begin (benchmarks/render_performance.py writes this part) -->"
END = "<!-- measured: end -->"
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "performance.md")


def _figure(row: dict[str, Any]) -> str:
  if row.get("images_per_s") is not None and row["case"] != "loss":
    return f"{row['images_per_s']:,.0f} img/s"
  return f"{row['step_ms']:.2f} ms"


def _reference(ref: dict[str, Any]) -> str:
  return f"{ref['images_per_s']:,} img/s" if "images_per_s" in ref else f"{ref['step_ms']} ms"


def _target(ref: dict[str, Any]) -> str:
  words = {"images_per_s": lambda v: f">= {v:,} img/s",
           "ratio_to_step": lambda v: f">= {100 * v:.0f}% of step-only",
           "step_ms": lambda v: f"<= {v} ms",
           "peak_beyond_inputs_bytes": lambda v: f"<= {v / speed.GIB:g} GiB beyond inputs"}
  return ", ".join(words[k](v) for k, v in ref.get("target", {}).items()) or "—"


def comparison_table(rows: list[dict[str, Any]]) -> str:
  """One line per measured row that has a reference figure: ours, theirs, target, met."""
  lines = []
  for r in rows:
    if "reference" not in r:
      continue
    met = {True: "yes", False: "**no**", None: "—"}[r.get("meets_target")]
    lines.append([r["label"], r["model"], _figure(r), _reference(r["reference"]),
                  f"{r['speedup']:.2f}x", _target(r["reference"]), met])
  return results.markdown_table(["row", "model", "supcon_jax", "PyTorch reference", "speed-up",
                                "target", "met"], lines)


def measured_section(result: dict[str, Any], source: str) -> str:
  """The doc's measured part for one speed JSON (`source` names the file in the text)."""
  env, rows = result["environment"], result["rows"]
  return "\n".join([
      BEGIN, "",
      f"Measured on {speed.format_environment(env)}; from `{source}`, written by",
      f"`{' '.join(result.get('command') or ['?'])}`.", "",
      comparison_table(rows), "", "Every row:", "", speed.format_table(rows), "", END])


def render(doc: str, result: dict[str, Any], source: str) -> str:
  """`doc` with the text between the markers replaced by `measured_section`."""
  if doc.count(BEGIN) != 1 or doc.count(END) != 1:
    raise ValueError(f"the doc must hold the lines {BEGIN!r} and {END!r} once each")
  head, rest = doc.split(BEGIN)
  tail = rest.split(END)[1]
  return head + measured_section(result, source) + tail


def main(argv: list[str] | None = None) -> None:
  """The command line: render the doc from a speed JSON."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("json", help="a speed JSON (benchmarks.speed --suite reference --json)")
  parser.add_argument("--doc", default=DOC, help="the doc to render into")
  parser.add_argument("--out", default="", help="where to write it (default: the doc itself)")
  args = parser.parse_args(argv)
  with open(args.json, encoding="utf-8") as f:
    result = json.load(f)
  with open(args.doc, encoding="utf-8") as f:
    doc = f.read()
  out = args.out or args.doc
  source = os.path.relpath(args.json, os.path.dirname(os.path.abspath(out)))
  with open(out, "w", encoding="utf-8") as f:
    f.write(render(doc, result, source))


if __name__ == "__main__":
  main()
