"""Exports a trained model as two plain files that need neither orbax nor the workdir.

  python -m supcon_jax.export --workdir=/tmp/digits/supcon --out=/tmp/digits_encoder [--step=N]
      [--overwrite]

writes `<out>/encoder.msgpack` (flax.serialization's msgpack of {"params", "batch_stats"} of
the whole model: encoder and projection head or classifier) and `<out>/model_card.json`: what
the model is (architecture, representation and projection sizes, the input it expects and
its normalisation, method, dataset, training step, the evaluation results when the workdir
has them) and the full config, from which `trained.load_encoder(<out>)` rebuilds it. An `--out`
that already holds files is refused (naming them) unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import flax.serialization
import jax
from etils import epath

from supcon_jax import checkpoint, fileio, results
from supcon_jax.trained import CONFIG, MODEL_CARD, WEIGHTS, TrainedModel, load_encoder

CARD_FORMAT = "supcon_jax.model_card/1"  # changes when the card's fields change meaning


def model_card(model: TrainedModel, figures: dict[str, Any] | None) -> dict[str, Any]:
  """The model card of `model` (JSON-ready), with the workdir's results `figures` if any."""
  c = model.config
  head = {"head": c.model.head, "dim": c.model.proj_dim} if model.has_projection else None
  return {
      "format": CARD_FORMAT,
      "method": c.method,
      "step": model.step,
      "architecture": {"network": f"ResNet-{c.model.depth}", "depth": c.model.depth,
                       "width": c.model.width, "stem": c.model.stem, "dtype": c.model.dtype,
                       "zero_init_residual": c.model.zero_init_residual},
      "feature_dim": model.output_dim(),
      "projection": head,
      "input": {"image_size": c.data.image_size, "channels": model.channels,
                "mean": list(c.data.mean), "std": list(c.data.std),
                "host_resize": c.data.host_resize},
      "dataset": {"source": c.data.source, "name": c.data.name,
                  "num_classes": c.data.num_classes},
      "training": {"step": model.step, "batch_size": c.batch_size, "epochs": c.epochs},
      "results": figures,
      "exported_from": str(model.checkpoint),
      "config": c.to_dict(),
  }


def export(workdir: str, out: str, step: int | None = None, *, overwrite: bool = False
           ) -> TrainedModel:
  """Writes the model of `workdir` (newest checkpoint, or `step`) to `out`; returns it."""
  if os.path.exists(os.path.join(out, CONFIG)):
    raise ValueError(f"{out} is a training workdir (it has {CONFIG}); export somewhere else")
  there = sorted(p.name for p in epath.Path(out).iterdir()) if epath.Path(out).is_dir() else []
  if there and not overwrite:
    raise ValueError(f"{out} is not empty (it holds {', '.join(there[:5])}"
                     f"{', ...' if len(there) > 5 else ''}); choose an empty or new directory, "
                     "or pass --overwrite to replace the export files there")
  model = load_encoder(workdir, step)
  figures = results.load(workdir) if results.exists(workdir) else None
  fileio.write_atomic(os.path.join(out, WEIGHTS),
                      flax.serialization.msgpack_serialize(jax.device_get(model.variables)))
  fileio.write_json(os.path.join(out, MODEL_CARD), model_card(model, figures))
  return model


def main(argv: list[str] | None = None) -> None:
  """The command line (`supcon-export`); a user error is one line on stderr and exit 1."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="training workdir of one method")
  parser.add_argument("--out", required=True, help="directory to write the export into")
  parser.add_argument("--step", type=int, default=None, help="checkpoint (default: newest)")
  parser.add_argument("--overwrite", action="store_true",
                      help="write into --out even if it already holds files")
  args = parser.parse_args(argv)
  try:
    model = export(args.workdir, args.out, args.step, overwrite=args.overwrite)
  except (ValueError, OSError, checkpoint.CheckpointError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"exported {model.method.name} step {model.step} of {args.workdir} to "
        f"{os.path.join(args.out, WEIGHTS)} and {os.path.join(args.out, MODEL_CARD)}")


if __name__ == "__main__":
  main()
