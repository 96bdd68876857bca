"""Exports a trained model as two plain files that need neither orbax nor the workdir.

  python -m supcon_jax.export --workdir=workdirs/digits/supcon --out=workdirs/digits_encoder
      [--step=N] [--format=msgpack|torch] [--overwrite]

writes `<out>/encoder.msgpack` (flax.serialization's msgpack of {"params", "batch_stats"} of
the whole model: encoder and projection head or classifier) and `<out>/model_card.json`: what
the model is (architecture, representation and projection sizes, the input it expects and
its normalisation, method, dataset, training step, the evaluation results when the workdir
has them) and the full config, from which `trained.load_encoder(<out>)` rebuilds it. An `--out`
that already holds files is refused (naming them) unless `--overwrite`. `--workdir` may also
be an export (e.g. one `supcon_jax.convert` wrote).

`--format=torch` writes `<out>/model.pth` instead: a PyTorch state_dict that the reference's
SupConResNet / SupCEResNet (CIFAR stem) or torchvision's resnet (ImageNet stem) loads with
strict=True (torch_layout.py); the card's "torch" block names the class. An online probe is
left out.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import flax.serialization
import jax
from etils import epath

from supcon_jax import checkpoint, fileio, results, torch_io, torch_layout
from supcon_jax.checks import one_of
from supcon_jax.trained import CONFIG, MODEL_CARD, WEIGHTS, TrainedModel, load_encoder

CARD_FORMAT = "supcon_jax.model_card/1"  # changes when the card's fields change meaning
TORCH_WEIGHTS = "model.pth"
FORMATS = {"msgpack": WEIGHTS, "torch": TORCH_WEIGHTS}


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


def check_out(out: str, overwrite: bool) -> None:
  """ValueError unless `out` may receive an export: not a workdir, empty or `overwrite`."""
  if os.path.exists(os.path.join(out, CONFIG)):
    raise ValueError(f"{out} is a training workdir (it has {CONFIG}); export somewhere else")
  there = sorted(p.name for p in epath.Path(out).iterdir()) if epath.Path(out).is_dir() else []
  if there and not overwrite:
    raise ValueError(f"{out} is not empty (it holds {', '.join(there[:5])}"
                     f"{', ...' if len(there) > 5 else ''}); choose an empty or new directory, "
                     "or pass --overwrite to replace the export files there")


def write(out: str, variables: Any, card: dict[str, Any], format: str = "msgpack") -> None:
  """The weights (`format`) and the card into `out`; the other format's weights go, so
  that the card describes what the directory holds."""
  one_of("export format", format, FORMATS)
  if format == "torch":
    layout = torch_layout.layout_for(card["architecture"]["stem"])
    torch_io.save(torch_layout.to_torch(variables, layout), os.path.join(out, TORCH_WEIGHTS))
    card = {**card, "torch": torch_card(card, layout)}
  else:
    fileio.write_atomic(os.path.join(out, WEIGHTS), flax.serialization.msgpack_serialize(
        variables))
  for other in set(FORMATS.values()) - {FORMATS[format]}:
    if epath.Path(out, other).exists():
      epath.Path(out, other).unlink()
  fileio.write_json(os.path.join(out, MODEL_CARD), card)


def torch_card(card: dict[str, Any], layout: torch_layout.Layout) -> dict[str, Any]:
  """What the torch export is and which PyTorch class loads it (strict=True)."""
  arch, head, classes = card["architecture"], card["projection"], card["dataset"]["num_classes"]
  name = f"resnet{arch['depth']}"
  if layout == torch_layout.SUPCONTRAST:
    loads = (f"SupConResNet(name='{name}', head='{head['head']}', feat_dim={head['dim']})"
             if head else f"SupCEResNet(name='{name}', num_classes={classes})" if classes
             else f"SupCEResNet(name='{name}').encoder, keys without 'encoder.' (no classifier)")
  elif head and head["head"] == "mlp":
    d = card["feature_dim"]
    loads = (f"torchvision.models.{name}() with fc = nn.Sequential(nn.Linear({d}, {d}), "
             f"nn.ReLU(), nn.Linear({d}, {head['dim']}))")
  else:
    loads = (f"torchvision.models.{name}(num_classes={head['dim'] if head else classes})"
             if head or classes else f"torchvision.models.{name}() with fc = nn.Identity()")
  out = {"file": TORCH_WEIGHTS, "layout": layout.name, "loads_into": loads}
  if arch["width"] != 1:
    out["note"] = f"width {arch['width']}: the reference's and torchvision's classes are width 1"
  return out


def export(workdir: str, out: str, step: int | None = None, *, overwrite: bool = False,
           format: str = "msgpack") -> TrainedModel:
  """Writes the model of `workdir` (newest checkpoint, or `step`) to `out` in `format`
  ("msgpack" | "torch"); returns it."""
  one_of("export format", format, FORMATS)
  check_out(out, overwrite)
  if os.path.abspath(out) == os.path.abspath(workdir):  # it would replace what it reads
    raise ValueError(f"--out {out} is the export being read; export somewhere else")
  model = load_encoder(workdir, step)
  figures = results.load(workdir) if results.exists(workdir) else None
  card = model_card(model, figures)
  if epath.Path(workdir, MODEL_CARD).exists():  # an export: its origin travels on
    origin = fileio.read_json(os.path.join(workdir, MODEL_CARD)).get("converted_from")
    card.update({"converted_from": origin} if origin else {})
  write(out, jax.device_get(model.variables), card, format)
  return model


def main(argv: list[str] | None = None) -> None:
  """The command line (`supcon-export`); a user error is one line on stderr and exit 1."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="training workdir of one method")
  parser.add_argument("--out", required=True, help="directory to write the export into")
  parser.add_argument("--step", type=int, default=None, help="checkpoint (default: newest)")
  parser.add_argument("--format", choices=tuple(FORMATS), default="msgpack",
                      help="msgpack (for load_encoder) or torch (a PyTorch state_dict)")
  parser.add_argument("--overwrite", action="store_true",
                      help="write into --out even if it already holds files")
  args = parser.parse_args(argv)
  try:
    model = export(args.workdir, args.out, args.step, overwrite=args.overwrite,
                   format=args.format)
  except (ValueError, OSError, ImportError, checkpoint.CheckpointError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(1)
  print(f"exported {model.method.name} step {model.step} of {args.workdir} to "
        f"{os.path.join(args.out, FORMATS[args.format])} and "
        f"{os.path.join(args.out, MODEL_CARD)}")


if __name__ == "__main__":
  main()
