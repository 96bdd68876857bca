"""Imports a PyTorch ResNet (the reference's or torchvision's) as an export directory.

Reads the checkpoints of the reference (HobbitLong/SupContrast: SupConResNet, SupCEResNet)
and torchvision's resnet18-152 state_dicts:

  python -m supcon_jax.convert SOURCE.pth --out DIR [--method supcon|simclr]
      [--fc auto|classifier|head|drop] [--prefix P] [--depth N] [--mean M M M --std S S S]
      [--image-size N] [--overwrite]

The depth, stem, width, head (MLP or linear, its size) or classifier (its classes) come
from the state_dict's keys and shapes (torch_layout.py); DataParallel's `module.` is
removed. The method, dataset and input size come from the reference's saved options when
the checkpoint has them (`opt`), else SupCon; the normalisation defaults to the
reference's CIFAR values for the CIFAR stem (CIFAR-100's for its CIFAR-100 runs) and to
ImageNet's for the ImageNet stem; a .pth that `supcon-export --format torch` wrote converts
back with the input and method its model card beside it says. The flags override. DIR
gets what `supcon_jax.export` writes (encoder.msgpack, model_card.json with the full
config), so `load_encoder(DIR)`, `supcon-embed --workdir=DIR` and
`--config.linear.encoder_workdir=DIR` take it; the card's "converted_from" says where the
weights came from and what was inferred.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import sys
from typing import Any

import ml_collections

from supcon_jax import checkpoint, export, fileio, torch_io, torch_layout, trained
from supcon_jax import config as config_lib
from supcon_jax.checks import one_of

FC_CHOICES = ("auto", "classifier", "head", "drop")
# The reference's normalisation (main_supcon.py / main_ce.py), and torchvision's ImageNet one.
REFERENCE_NORMALISATION = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                           "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))}
IMAGENET_NORMALISATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_OPTIONS = ("model", "method", "dataset", "size", "batch_size", "epochs", "temp",
            "learning_rate")  # the reference's options the card repeats


def convert(source: str, out: str, *, method: str | None = None, fc: str = "auto",
            prefix: str = "", depth: int | None = None, mean: tuple[float, ...] | None = None,
            std: tuple[float, ...] | None = None, image_size: int | None = None,
            overwrite: bool = False) -> trained.TrainedModel:
  """Writes the PyTorch model of `source` (.pth) as an export into `out`; returns it, as
  `load_encoder(out)` reads it back. ValueError for a file that is not such a model."""
  one_of("--fc", fc, FC_CHOICES)
  export.check_out(out, overwrite)
  saved, meta = torch_io.read(source)
  state_dict = {torch_layout.strip_module(k): v for k, v in saved.items()}
  if prefix:  # e.g. the query encoder of a momentum-encoder checkpoint
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not state_dict:
      raise ValueError(f"no key of {source} starts with --prefix {prefix!r} (its first keys: "
                       f"{', '.join(list(saved)[:3])})")
  found = torch_layout.infer(state_dict, fc, depth)
  if found.top == "none":  # a dropped head or classifier is not an unexpected key
    state_dict = {k: v for k, v in state_dict.items()
                  if not k.startswith((f"{found.layout.head}.", "fc."))}
  opt = _options(meta.get("opt"))
  beside = _card_beside(source)  # this project's torch export: its own input and method
  config = _config(found, opt, method=method or beside.get("method"),
                   mean=mean or beside.get("mean"), std=std or beside.get("std"),
                   image_size=image_size or beside.get("image_size"))
  what = (f"ResNet-{config.model.depth} ({found.stem} stem, width {found.width:g}, "
          f"{found.head + ' head' if found.head else found.top}, {found.layout.name} layout)")
  variables = torch_layout.to_flax(state_dict, trained.abstract_variables(config),
                                   found.layout, what)
  model = trained.TrainedModel(config, variables, checkpoint.CheckpointRef(out, 0))
  card = export.model_card(model, None)
  card["exported_from"] = os.path.abspath(source)
  card["training"] = ({"epoch": meta.get("epoch"), "batch_size": opt.get("batch_size"),
                       "epochs": opt.get("epochs")} if opt or "epoch" in meta else None)
  card["converted_from"] = {
      "file": os.path.abspath(source), "sha256": _sha256(source),
      "layout": found.layout.name, "model": _torch_class(found),
      "module_prefix_removed": any(k != torch_layout.strip_module(k) for k in saved),
      "inferred": {"depth": config.model.depth, "stem": found.stem, "width": found.width,
                   "head": found.head, "out_dim": found.out_dim},
      "given": {k: v for k, v in {"method": method, "fc": None if fc == "auto" else fc,
                                  "prefix": prefix or None, "depth": depth, "mean": mean,
                                  "std": std, "image_size": image_size}.items()
                if v is not None},
      "options": opt or None}
  export.write(out, variables, card)
  return trained.load_encoder(out)


def _card_beside(source: str) -> dict[str, Any]:
  """What the model card that `supcon-export --format torch` wrote beside `source` says of
  the model's input and method ({} where there is none): a .pth of this project's converts
  back with its own normalisation, not the reference's defaults."""
  path = os.path.join(os.path.dirname(os.path.abspath(source)), export.MODEL_CARD)
  if not os.path.exists(path):
    return {}
  card = fileio.read_json(path)
  if card.get("format") != export.CARD_FORMAT or "torch" not in card:
    return {}
  given = card["input"]
  return {"mean": tuple(given["mean"]), "std": tuple(given["std"]),
          "image_size": given["image_size"],
          "method": card["method"] if card["method"] in ("supcon", "simclr") else None}


def _options(opt: Any) -> dict[str, Any]:
  """The reference's saved argparse options that the card repeats, JSON-ready."""
  fields = vars(opt) if isinstance(opt, argparse.Namespace) else opt
  if not isinstance(fields, dict):
    return {}
  return {k: fields[k] if isinstance(fields[k], int | float | str) else str(fields[k])
          for k in _OPTIONS + ("mean", "std") if fields.get(k) is not None}


def _config(found: torch_layout.Inferred, opt: dict[str, Any], *, method: str | None,
            mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
            image_size: int | None) -> ml_collections.ConfigDict:
  """The config the model card carries: the inferred model, the given or default input."""
  c = config_lib.base_config()
  c.method = _method(found, opt, method)
  dataset = str(opt.get("dataset", ""))
  default_mean, default_std = _normalisation(found.stem, dataset, opt)
  mean, std = tuple(mean or default_mean), tuple(std or default_std)
  if not len(mean) == len(std) == found.channels:
    raise ValueError(f"the model takes {found.channels}-channel images: give --mean and --std "
                     f"with {found.channels} values each (got {len(mean)} and {len(std)})")
  imagenet = found.stem == "imagenet"
  c.data.update(source="pytorch", name=dataset or ("imagenet2012" if imagenet else "unknown"),
                mean=mean, std=std, host_resize=imagenet,
                image_size=image_size or int(opt.get("size", 224 if imagenet else 32)))
  c.data.num_classes = (found.out_dim if found.top != "head"
                        else {"cifar10": 10, "cifar100": 100}.get(dataset))
  c.model.update(depth=found.depth, width=found.width, stem=found.stem, dtype="float32")
  if found.head:
    c.model.update(head=found.head, proj_dim=found.out_dim)
  return c


def _method(found: torch_layout.Inferred, opt: dict[str, Any], method: str | None) -> str:
  contrastive = ("supcon", "simclr")
  if found.top != "head":
    if method not in (None, "ce"):
      raise ValueError(f"--method {method}: the state_dict has no projection head "
                       f"({'a classifier' if found.top == 'classifier' else 'nothing'} on the "
                       "encoder), so it converts as ce")
    return "ce"
  if method is not None:
    one_of("--method of a model with a projection head", method, contrastive)
    return method
  saved = str(opt.get("method", "")).lower()
  return saved if saved in contrastive else "supcon"


def _normalisation(stem: str, dataset: str, opt: dict[str, Any]
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  if stem == "imagenet":
    return IMAGENET_NORMALISATION
  if dataset == "path" and "mean" in opt and "std" in opt:  # the reference's own-data runs
    try:
      return tuple(ast.literal_eval(opt["mean"])), tuple(ast.literal_eval(opt["std"]))
    except (ValueError, SyntaxError, TypeError) as e:
      raise ValueError(f"the checkpoint's options have mean={opt['mean']!r}, std="
                       f"{opt['std']!r}: give --mean and --std") from e
  return REFERENCE_NORMALISATION.get(dataset, REFERENCE_NORMALISATION["cifar10"])


def _torch_class(found: torch_layout.Inferred) -> str:
  if found.layout != torch_layout.SUPCONTRAST:
    return f"torchvision resnet{found.depth}"
  return f"{'SupConResNet' if found.top == 'head' else 'SupCEResNet'} resnet{found.depth}"


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
  """The command line (`supcon-convert`); a user error is one line on stderr and exit 1."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("source", help="the .pth file (a state_dict, or a checkpoint with one)")
  parser.add_argument("--out", required=True, help="directory to write the export into")
  parser.add_argument("--method", default=None, help="supcon or simclr, for a model with a "
                      "projection head (default: the checkpoint's, else supcon)")
  parser.add_argument("--fc", choices=FC_CHOICES, default="auto",
                      help="a torchvision fc: classifier (auto), linear projection head, or "
                      "drop it (also drops a SupContrast head or fc)")
  parser.add_argument("--prefix", default="", help="read only the keys under this prefix "
                      "(removed), e.g. encoder_q. (after DataParallel's module.)")
  parser.add_argument("--depth", type=int, default=None, help="instead of the inferred depth")
  for name in ("--mean", "--std"):
    parser.add_argument(name, type=float, nargs="+", default=None,
                        help="per channel, of pixels / 255 (default: by stem, CIFAR or ImageNet)")
  parser.add_argument("--image-size", type=int, default=None,
                      help="the input side (default: the checkpoint's; 32 CIFAR, 224 ImageNet)")
  parser.add_argument("--overwrite", action="store_true",
                      help="write into --out even if it already holds files")
  args = parser.parse_args(argv)
  try:
    model = convert(args.source, args.out, method=args.method, fc=args.fc, prefix=args.prefix,
                    depth=args.depth,
                    mean=args.mean and tuple(args.mean), std=args.std and tuple(args.std),
                    image_size=args.image_size, overwrite=args.overwrite)
  except (ValueError, OSError, ImportError, checkpoint.CheckpointError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(1)
  c = model.config
  print(f"converted {args.source} ({model.method.name}, ResNet-{c.model.depth}, {c.model.stem} "
        f"stem) to {args.out}")


if __name__ == "__main__":
  main()
