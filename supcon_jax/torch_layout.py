"""Where each variable of this project's models sits in a PyTorch state_dict, both ways.

Two layouts of the same ResNet (models/resnet.py is laid out like torchvision's):

  SupContrast  the reference's SupConResNet / SupCEResNet: `encoder.conv1`, `encoder.bn1`,
               `encoder.layerS.I.{conv,bn}N`, projection shortcuts `shortcut.0` / `shortcut.1`;
               the head `head.0` / `head.2` (MLP) or `head` (linear), or a classifier `fc`
  torchvision  `conv1`, `bn1`, `layerS.I.{conv,bn}N`, `downsample.0` / `downsample.1`, `fc`
               (a classifier; `fc.0` / `fc.2` or `fc` as a projection head)

A conv weight is OIHW there and HWIO here, a linear weight [out, in] there and [in, out]
here; BatchNorm's weight / bias are the params `scale` / `bias`, its running mean and
variance the batch_stats `mean` / `var` (same epsilon, 1e-5), `num_batches_tracked` has no
counterpart. Numpy only: torch_io.py reads and writes the .pth files.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from supcon_jax.models.resnet import BOTTLENECK_DEPTHS, STAGE_SIZES

IGNORED = "num_batches_tracked"  # a BatchNorm counter: no effect on inference
_TO_FLAX = {"conv": (2, 3, 1, 0), "dense": (1, 0), "vector": (0,)}  # axes of np.transpose
_BLOCK = re.compile(r"stage(\d+)_block(\d+)")


class LayoutError(ValueError):
  """A state_dict that is not the architecture: the message names the first bad key."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one state_dict names the model: key prefix of the encoder, of the shortcuts, of
  the projection head (the classifier is always `fc`)."""
  encoder: str  # "encoder." (SupContrast) or "" (torchvision)
  shortcut: str  # "shortcut" | "downsample"
  head: str  # "head" | "fc"

  @property
  def name(self) -> str:
    return "SupContrast" if self.encoder else "torchvision"


SUPCONTRAST = Layout("encoder.", "shortcut", "head")
TORCHVISION = Layout("", "downsample", "fc")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor: its state_dict key, where it lives in the flax variables, how it turns."""
  key: str
  collection: str  # "params" | "batch_stats"
  path: tuple[str, ...]
  kind: str  # conv | dense | vector


def strip_module(key: str) -> str:
  """`key` without DataParallel's `module.` components (anywhere: the reference wraps only
  its encoder, `encoder.module.conv1.weight`)."""
  return ".".join(part for part in key.split(".") if part != "module")


def layout_for(stem: str) -> Layout:
  """The layout an export writes: the reference's for the CIFAR stem, torchvision's else."""
  return SUPCONTRAST if stem == "cifar" else TORCHVISION


def entries(abstract: Any, layout: Layout) -> list[Entry]:
  """Every tensor of the model whose variables' shapes are `abstract` ({"params",
  "batch_stats"}), in the order PyTorch's modules list them. An online probe is left out."""
  params = abstract["params"]
  out = _conv(f"{layout.encoder}conv1", ("encoder", "stem_conv"))
  out += _bn(f"{layout.encoder}bn1", ("encoder", "stem_bn"))
  blocks = sorted((tuple(int(g) for g in _BLOCK.fullmatch(name).groups()), name)
                  for name in params["encoder"] if _BLOCK.fullmatch(name))
  for (stage, i), name in blocks:
    key, path = f"{layout.encoder}layer{stage}.{i - 1}", ("encoder", name)
    for n in range(1, 4):
      if f"conv{n}" in params["encoder"][name]:
        out += _conv(f"{key}.conv{n}", path + (f"conv{n}",)) + _bn(f"{key}.bn{n}",
                                                                   path + (f"bn{n}",))
    if "proj_conv" in params["encoder"][name]:
      out += _conv(f"{key}.{layout.shortcut}.0", path + ("proj_conv",))
      out += _bn(f"{key}.{layout.shortcut}.1", path + ("proj_bn",))
  if "head" in params:
    if "hidden" in params["head"]:
      out += _dense(f"{layout.head}.0", ("head", "hidden")) + _dense(f"{layout.head}.2",
                                                                     ("head", "out"))
    else:
      out += _dense(layout.head, ("head", "out"))
  if "classifier" in params:
    out += _dense("fc", ("classifier", "dense"))
  return out


def _conv(key: str, path: tuple[str, ...]) -> list[Entry]:
  return [Entry(f"{key}.weight", "params", path + ("kernel",), "conv")]


def _dense(key: str, path: tuple[str, ...]) -> list[Entry]:
  return [Entry(f"{key}.weight", "params", path + ("kernel",), "dense"),
          Entry(f"{key}.bias", "params", path + ("bias",), "vector")]


def _bn(key: str, path: tuple[str, ...]) -> list[Entry]:
  return [Entry(f"{key}.weight", "params", path + ("scale",), "vector"),
          Entry(f"{key}.bias", "params", path + ("bias",), "vector"),
          Entry(f"{key}.running_mean", "batch_stats", path + ("mean",), "vector"),
          Entry(f"{key}.running_var", "batch_stats", path + ("var",), "vector")]


def _leaf(tree: Any, entry: Entry) -> Any:
  node = tree[entry.collection]
  for name in entry.path:
    node = node[name]
  return node


def torch_shape(entry: Entry, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of the tensor whose flax shape is `flax_shape`."""
  axes = _TO_FLAX[entry.kind]
  return tuple(flax_shape[axes.index(i)] for i in range(len(axes)))


def to_flax(state_dict: dict[str, np.ndarray], abstract: Any, layout: Layout, what: str
            ) -> dict[str, Any]:
  """{"params", "batch_stats"} of the model `abstract` describes, from a state_dict whose
  keys are already stripped (`strip_module`); LayoutError naming the first missing,
  misshapen or extra key. `what`: the architecture and layout, for the message."""
  variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
  listed = entries(abstract, layout)
  for entry in listed:
    expected = torch_shape(entry, tuple(_leaf(abstract, entry).shape))
    if entry.key not in state_dict:
      raise LayoutError(f"the state_dict does not match {what}: it has no {entry.key} "
                        f"(expected shape {expected})")
    value = state_dict[entry.key]
    if tuple(value.shape) != expected:
      raise LayoutError(f"the state_dict does not match {what}: {entry.key} has shape "
                        f"{tuple(value.shape)}, expected {expected}")
    node = variables[entry.collection]
    for name in entry.path[:-1]:
      node = node.setdefault(name, {})
    node[entry.path[-1]] = np.ascontiguousarray(
        np.transpose(np.asarray(value, np.float32), _TO_FLAX[entry.kind]))
  known = {e.key for e in listed}
  for key, value in state_dict.items():
    if key not in known and not key.endswith(IGNORED):
      raise LayoutError(f"the state_dict does not match {what}: unexpected key {key} "
                        f"(shape {tuple(np.shape(value))})")
  return variables


def to_torch(variables: Any, layout: Layout) -> dict[str, np.ndarray]:
  """The state_dict (numpy float32, PyTorch's key order) of flax `variables`, with a zero
  `num_batches_tracked` for every BatchNorm, as PyTorch's modules hold one."""
  out = {}
  for entry in entries(variables, layout):
    value = np.asarray(_leaf(variables, entry), np.float32)
    out[entry.key] = np.ascontiguousarray(np.transpose(value, np.argsort(_TO_FLAX[entry.kind])))
    if entry.key.endswith(".running_var"):
      out[entry.key[:-len("running_var")] + IGNORED] = np.zeros((), np.int64)
  return out


@dataclasses.dataclass(frozen=True)
class Inferred:
  """What the keys and shapes of a state_dict say about the model."""
  layout: Layout
  depth: int
  width: float
  stem: str
  channels: int  # of the input images
  top: str  # "head" | "classifier" | "none"
  head: str | None  # "mlp" | "linear" for a head
  out_dim: int  # proj_dim of a head, classes of a classifier, 0 for none


def infer(state_dict: dict[str, np.ndarray], fc: str = "auto", depth: int | None = None
          ) -> Inferred:
  """The architecture of a stripped state_dict. `fc`: what a single linear `fc` of the
  torchvision layout is ("auto" / "classifier": a classifier, "head": a linear projection
  head, "drop": neither, as a SupContrast `head` or `fc` then); `depth` overrides."""
  keys = list(state_dict)
  prefix = "encoder." if "encoder.conv1.weight" in state_dict else ""
  if f"{prefix}conv1.weight" not in state_dict:
    stems = [k[:-len("conv1.weight")] for k in keys
             if k.endswith(".conv1.weight") and ".layer" not in k]
    hint = f"; the model may sit under {stems[0]}: pass --prefix {stems[0]}" if stems else ""
    raise LayoutError("not a ResNet state_dict of the reference (SupContrast) or torchvision: "
                      f"it has no conv1.weight or encoder.conv1.weight (its first keys: "
                      f"{', '.join(keys[:3]) or 'none'}){hint}")
  shortcut = "downsample" if any(".downsample." in k for k in keys) else "shortcut"
  layout = Layout(prefix, shortcut, "head" if prefix else "fc")
  stem_shape = tuple(state_dict[f"{prefix}conv1.weight"].shape)
  stems = {3: "cifar", 7: "imagenet"}
  if len(stem_shape) != 4 or stem_shape[2] not in stems:
    raise LayoutError(f"{prefix}conv1.weight has shape {stem_shape}: neither the CIFAR stem "
                      "(3x3 kernel) nor the ImageNet stem (7x7)")
  if depth is None:
    depth = _depth(keys, prefix)
  top, head, out_dim = _top(state_dict, layout, fc)
  return Inferred(layout, depth, stem_shape[0] / 64, stems[stem_shape[2]], stem_shape[1], top,
                  head, out_dim)


def _depth(keys: list[str], prefix: str) -> int:
  blocks = tuple(len({k[len(prefix):].split(".")[1] for k in keys
                      if k.startswith(f"{prefix}layer{s}.")}) for s in range(1, 5))
  bottleneck = f"{prefix}layer1.0.conv3.weight" in keys
  for depth, sizes in STAGE_SIZES.items():
    if sizes == blocks and bottleneck == (depth in BOTTLENECK_DEPTHS):
      return depth
  known = ", ".join(f"{d}: {s}" for d, s in STAGE_SIZES.items())
  raise LayoutError(f"the state_dict's blocks per stage {blocks} "
                    f"({'bottleneck' if bottleneck else 'basic'} blocks) match no ResNet depth "
                    f"({known}); pass --depth to name the one it should be")


def _top(state_dict: dict[str, np.ndarray], layout: Layout, fc: str
         ) -> tuple[str, str | None, int]:
  """(top, head kind, its output size) above the encoder."""
  if fc == "drop":
    return "none", None, 0
  for name in (layout.head, "fc"):
    if f"{name}.0.weight" in state_dict and f"{name}.2.weight" in state_dict:
      return "head", "mlp", int(state_dict[f"{name}.2.weight"].shape[0])
  if f"{layout.head}.weight" in state_dict and (layout.encoder or fc == "head"):
    return "head", "linear", int(state_dict[f"{layout.head}.weight"].shape[0])
  if "fc.weight" in state_dict:
    return "classifier", None, int(state_dict["fc.weight"].shape[0])
  return "none", None, 0

