"""The weight converter (supcon_jax.convert) and `supcon-export --format torch`, against
PyTorch itself: the reference's SupConResNet / SupCEResNet and torchvision's ResNet, written
below from their architecture (the reference's and torchvision's key names), with random
weights and BatchNorm statistics, give the outputs of the converted model within 1e-4.
"""

import argparse
import json
import os
import sys

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from supcon_jax import checkpoint, convert, embed, experiment, export, trained
from supcon_jax import config as config_lib
from tests.helpers import tiny_config

torch.set_num_threads(1)  # two cores, shared with JAX's compiler
# The bound: float32 through 50 layers in two frameworks that sum convolutions in
# different orders, ~1e-6 relative per layer on activations of order 1.
TOLERANCE = 1e-4
BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # the reference's
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# --------------------------------------------- the PyTorch models, as the reference has them

class Block(nn.Module):
  """BasicBlock (conv1-2) or Bottleneck (conv1-3, stride in the 3x3), with the projection
  shortcut named as the source names it: `shortcut` (SupContrast) or `downsample`."""

  def __init__(self, kind: str, cin: int, planes: int, stride: int, shortcut: str):
    super().__init__()
    expansion = 4 if kind == "bottleneck" else 1
    if kind == "bottleneck":
      specs = [(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, planes * 4, 1, 1)]
    else:
      specs = [(cin, planes, 3, stride), (planes, planes, 3, 1)]
    for n, (i, o, k, s) in enumerate(specs, 1):
      setattr(self, f"conv{n}", nn.Conv2d(i, o, k, s, k // 2, bias=False))
      setattr(self, f"bn{n}", nn.BatchNorm2d(o))
    self.n, self.shortcut_name = len(specs), shortcut
    if stride != 1 or cin != planes * expansion:
      setattr(self, shortcut, nn.Sequential(
          nn.Conv2d(cin, planes * expansion, 1, stride, bias=False),
          nn.BatchNorm2d(planes * expansion)))

  def forward(self, x):
    y = x
    for n in range(1, self.n + 1):
      y = getattr(self, f"bn{n}")(getattr(self, f"conv{n}")(y))
      y = F.relu(y) if n < self.n else y
    skip = getattr(self, self.shortcut_name, None)
    return F.relu(y + (skip(x) if skip is not None else x))


class Encoder(nn.Module):
  """The reference's ResNet (CIFAR stem: 3x3 stride 1, no max-pool) or torchvision's
  (ImageNet stem: 7x7 stride 2, max-pool): conv1, bn1, layer1-4, average pool -> r."""

  def __init__(self, depth: int, width: float = 1.0, stem: str = "cifar",
               shortcut: str = "shortcut"):
    super().__init__()
    kind, sizes = BLOCKS[depth]
    c = round(64 * width)
    imagenet = stem == "imagenet"
    self.conv1 = nn.Conv2d(3, c, 7 if imagenet else 3, 2 if imagenet else 1, 3 if imagenet else 1,
                           bias=False)
    self.bn1 = nn.BatchNorm2d(c)
    self.pool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
    for s, n in enumerate(sizes):
      planes, blocks = round(64 * 2**s * width), []
      for i in range(n):
        blocks.append(Block(kind, c, planes, 2 if s and not i else 1, shortcut))
        c = planes * (4 if kind == "bottleneck" else 1)
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.dim = c

  def encode(self, x):
    x = self.pool(F.relu(self.bn1(self.conv1(x))))
    for s in range(1, 5):
      x = getattr(self, f"layer{s}")(x)
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

  def forward(self, x):
    return {"repr": self.encode(x)}


def head_module(kind: str, dim: int, out: int) -> nn.Module:
  if kind == "linear":
    return nn.Linear(dim, out)
  return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))


class SupConResNet(nn.Module):
  """The reference's: `encoder` and `head`; z = normalize(head(r))."""

  def __init__(self, depth: int, head: str = "mlp", feat_dim: int = 128, **encoder):
    super().__init__()
    self.encoder = Encoder(depth, **encoder)
    self.head = head_module(head, self.encoder.dim, feat_dim)

  def forward(self, x):
    r = self.encoder.encode(x)
    return {"repr": r, "proj": F.normalize(self.head(r), dim=1)}


class SupCEResNet(nn.Module):
  """The reference's cross-entropy model: `encoder` and `fc`."""

  def __init__(self, depth: int, num_classes: int = 10, **encoder):
    super().__init__()
    self.encoder = Encoder(depth, **encoder)
    self.fc = nn.Linear(self.encoder.dim, num_classes)

  def forward(self, x):
    r = self.encoder.encode(x)
    return {"repr": r, "logits": self.fc(r)}


class TorchvisionResNet(Encoder):
  """torchvision's layout: the encoder at the top level and `fc` (a classifier, a projection
  head as SimCLR-style ports replace it, or none)."""

  def __init__(self, depth: int, fc: str = "classifier", out: int = 1000, width: float = 1.0):
    super().__init__(depth, width, "imagenet", "downsample")
    self.fc_kind = fc
    if fc != "none":
      self.fc = nn.Linear(self.dim, out) if fc == "classifier" else head_module(fc, self.dim, out)

  def forward(self, x):
    r = self.encode(x)
    if self.fc_kind == "none":
      return {"repr": r}
    if self.fc_kind == "classifier":
      return {"repr": r, "logits": self.fc(r)}
    return {"repr": r, "proj": F.normalize(self.fc(r), dim=1)}


def randomised(model: nn.Module, seed: int) -> nn.Module:
  """`model` in eval mode with random BatchNorm affine parameters and running statistics
  (PyTorch's own initialisation for the rest, seeded)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.2 + torch.rand(m.running_var.shape, generator=g))
        m.num_batches_tracked.fill_(123)
  return model.eval()


def build(cls, seed: int, *args, **kwargs) -> nn.Module:
  torch.manual_seed(seed)
  return randomised(cls(*args, **kwargs), seed)


# ------------------------------------------------------------------------------- helpers

def save(obj, path) -> str:
  torch.save(obj, path)
  return str(path)


def max_difference(torch_model: nn.Module, model: trained.TrainedModel, size: int, seed: int = 0
                   ) -> dict[str, float]:
  """{output: max |PyTorch - converted|} on random images of `size`, in eval mode."""
  images = np.random.default_rng(seed).random((2, size, size, 3), np.float32)
  mean, std = (np.asarray(v, np.float32) for v in (model.config.data.mean, model.config.data.std))
  x = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    expected = {k: v.numpy() for k, v in torch_model(x).items()}
  got = model.outputs(images, tuple(expected))
  assert set(got) == set(expected)
  return {k: float(np.max(np.abs(np.asarray(got[k]) - expected[k]))) for k in expected}


def torch_state(model: nn.Module) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in model.state_dict().items() if "num_batches" not in k}


def assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
  assert list(a) == list(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def run_main(main, argv, capsys) -> str:
  """The one-line error of a command line that must fail."""
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
  return err


# ----------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("stem,head", [("cifar", "mlp"), ("cifar", "linear"),
                                       ("imagenet", "mlp"), ("imagenet", "linear")])
def test_contrastive_models_embed_as_in_pytorch(tmp_path, depth, stem, head):
  """CIFAR stem: the reference's SupConResNet checkpoint ({'model', 'opt', 'epoch'}, the
  encoder wrapped in DataParallel); ImageNet stem: a torchvision ResNet whose fc is the
  projection head. Width 1/4 keeps them quick: the layout is the same."""
  if stem == "cifar":
    model = build(SupConResNet, depth, depth, head, 32, width=0.25)
    state = {k.replace("encoder.", "encoder.module.", 1): v
             for k, v in model.state_dict().items()}
    opt = argparse.Namespace(method="SimCLR", dataset="cifar100", model=f"resnet{depth}",
                             batch_size=256, size=32, epochs=1000)
    source = save({"opt": opt, "model": state, "optimizer": {"lr": 0.5}, "epoch": 7},
                  tmp_path / "ckpt_epoch_7.pth")
    size, flags = 32, []
  else:
    model = build(TorchvisionResNet, depth, depth, head, 32, width=0.25)
    source, size = save(model.state_dict(), tmp_path / "resnet.pth"), 64
    flags = ["--image-size", "64"] + (["--fc", "head"] if head == "linear" else [])
  convert.main([source, "--out", str(tmp_path / "converted"), *flags])
  converted = trained.load_encoder(str(tmp_path / "converted"))
  assert max(max_difference(model, converted, size).values()) <= TOLERANCE
  c = converted.config
  assert (c.model.depth, c.model.stem, c.model.width, c.model.head, c.model.proj_dim) == \
      (depth, stem, 0.25, head, 32)
  card = json.loads((tmp_path / "converted" / "model_card.json").read_text())
  source_card = card["converted_from"]
  assert source_card["file"] == os.path.abspath(source) and len(source_card["sha256"]) == 64
  assert card["projection"] == {"head": head, "dim": 32}
  if stem == "cifar":  # the reference's options: its method, dataset and normalisation
    assert card["method"] == "simclr" and source_card["module_prefix_removed"]
    assert source_card["model"] == f"SupConResNet resnet{depth}"
    assert card["input"]["mean"] == [0.5071, 0.4867, 0.4408]
    assert card["dataset"] == {"source": "pytorch", "name": "cifar100", "num_classes": 100}
    assert card["training"] == {"epoch": 7, "batch_size": 256, "epochs": 1000}
  else:
    assert card["method"] == "supcon" and source_card["layout"] == "torchvision"
    assert card["input"]["mean"] == list(IMAGENET[0]) and card["input"]["host_resize"]
  # Back to PyTorch: the same tensors, bit for bit.
  export.main(["--workdir", str(tmp_path / "converted"), "--out", str(tmp_path / "torch"),
               "--format", "torch"])
  assert json.loads((tmp_path / "torch" / "model_card.json").read_text())["converted_from"] == \
      source_card
  back = torch.load(tmp_path / "torch" / "model.pth", weights_only=True)
  expected = {k.replace("encoder.module.", "encoder."): v for k, v in torch_state(model).items()}
  assert_bitwise({k: v.numpy() for k, v in back.items() if "num_batches" not in k}, expected)


@pytest.mark.parametrize("source", ["supcon_resnet50", "torchvision_resnet50"])
def test_full_width_resnet50s_match_pytorch(tmp_path, source):
  """The reference's SupConResNet-50 (32 px) and torchvision's resnet50 with its 1000-class
  fc (64 px through the ImageNet stem): r, z and the logits."""
  if source == "supcon_resnet50":
    model, size = build(SupConResNet, 1, 50), 32
  else:
    model, size = build(TorchvisionResNet, 2, 50), 64
  convert.main([save(model.state_dict(), tmp_path / "w.pth"), "--out", str(tmp_path / "out")])
  converted = trained.load_encoder(str(tmp_path / "out"))
  differences = max_difference(model, converted, size)
  assert set(differences) == ({"repr", "proj"} if source == "supcon_resnet50"
                              else {"repr", "logits"})
  assert max(differences.values()) <= TOLERANCE, differences
  assert converted.output_dim() == 2048
  if source == "torchvision_resnet50":
    assert converted.method.name == "ce" and converted.config.data.num_classes == 1000
    assert converted.config.data.image_size == 224  # the default: embed resizes to it


@pytest.mark.parametrize("kind", ["supce", "torchvision_drop_fc"])
def test_classifier_or_no_top_converts_as_ce(tmp_path, kind, capsys):
  if kind == "supce":
    model, flags, size = build(SupCEResNet, 3, 18, 7, width=0.25), [], 32
  else:
    model, size = build(TorchvisionResNet, 4, 18, "classifier", 10, width=0.25), 64
    flags = ["--fc", "drop", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
  convert.main([save(model.state_dict(), tmp_path / "w.pth"), "--out", str(tmp_path / "out"),
                *flags])
  assert "converted" in capsys.readouterr().out
  converted = trained.load_encoder(str(tmp_path / "out"))
  assert converted.method.name == "ce" and not converted.has_projection
  if kind == "supce":
    assert max(max_difference(model, converted, size).values()) <= TOLERANCE
    assert converted.config.data.num_classes == 7
    assert list(converted.config.data.std) == list(CIFAR10[1])  # the reference's default
  else:  # the fc is gone: r only
    model.fc_kind = "none"
    assert max(max_difference(model, converted, size).values()) <= TOLERANCE
    assert converted.config.data.num_classes == 0
    assert list(converted.config.data.mean) == [0.5, 0.5, 0.5]
    assert converted.config.data.image_size == 224
    export.main(["--workdir", str(tmp_path / "out"), "--out", str(tmp_path / "t"),
                 "--format", "torch"])
    card = json.loads((tmp_path / "t" / "model_card.json").read_text())
    assert card["torch"]["loads_into"] == "torchvision.models.resnet18() with fc = nn.Identity()"
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(tmp_path / "t" / "model.pth", weights_only=True))


def test_a_momentum_encoder_checkpoint_converts_with_a_prefix(tmp_path, capsys):
  """MoCo-style: query and key encoders (torchvision layout, MLP fc) and a queue, under
  'state_dict' and DataParallel's module.; --prefix picks the query encoder."""
  query = build(TorchvisionResNet, 8, 18, "mlp", 16, width=0.25)
  key = build(TorchvisionResNet, 9, 18, "mlp", 16, width=0.25)
  state = {f"module.encoder_{name}.{k}": v for name, m in (("q", query), ("k", key))
           for k, v in m.state_dict().items()}
  source = save({"state_dict": {**state, "module.queue": torch.zeros(16, 8)}, "epoch": 3},
                tmp_path / "moco.pth")
  err = run_main(convert.main, [source, "--out", str(tmp_path / "a")], capsys)
  assert "no conv1.weight or encoder.conv1.weight (its first keys: encoder_q.conv1.weight" in err
  assert "the model may sit under encoder_q.: pass --prefix encoder_q." in err
  err = run_main(convert.main, [source, "--out", str(tmp_path / "b"), "--prefix", "q."], capsys)
  assert "no key of " in err and "starts with --prefix 'q.'" in err
  convert.main([source, "--out", str(tmp_path / "c"), "--prefix", "encoder_q."])
  converted = trained.load_encoder(str(tmp_path / "c"))
  assert max(max_difference(query, converted, 64).values()) <= TOLERANCE
  card = json.loads((tmp_path / "c" / "model_card.json").read_text())
  assert card["converted_from"]["given"] == {"prefix": "encoder_q."}
  assert card["training"] == {"epoch": 3, "batch_size": None, "epochs": None}


def random_export(directory, method: str, stem: str, head: str = "mlp", seed: int = 0,
                  num_classes: int = 10) -> trained.TrainedModel:
  """A flax model with random parameters and BatchNorm statistics, written as an export."""
  c = config_lib.base_config()
  c.method = method
  c.model.update(depth=18 if stem == "cifar" else 50, width=0.25, stem=stem, head=head,
                 proj_dim=32)
  c.data.update(image_size=32 if stem == "cifar" else 64, num_classes=num_classes)
  abstract = trained.abstract_variables(c)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "var":
      return (0.2 + rng.random(leaf.shape)).astype(np.float32)
    if name == "kernel":  # PyTorch's default initialisation: activations stay near 1
      bound = 1 / np.sqrt(np.prod(leaf.shape[:-1]))
      return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
    return ((1.0 if name == "scale" else 0.0) + 0.2 * rng.standard_normal(leaf.shape)
            ).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(draw, abstract)
  model = trained.TrainedModel(c, variables, checkpoint.CheckpointRef(str(directory), 5))
  export.write(str(directory), variables, export.model_card(model, None))
  return trained.load_encoder(str(directory))


@pytest.mark.parametrize("method,stem,head", [("supcon", "cifar", "mlp"),
                                              ("ce", "cifar", "mlp"),
                                              ("simclr", "imagenet", "linear"),
                                              ("ce", "imagenet", "mlp")])
def test_torch_export_loads_strictly_and_imports_back_bitwise(tmp_path, capsys, method, stem,
                                                              head):
  original = random_export(tmp_path / "flax", method, stem, head)
  export.main(["--workdir", str(tmp_path / "flax"), "--out", str(tmp_path / "torch"),
               "--format", "torch"])
  assert "model.pth" in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path / "torch")) == ["model.pth", "model_card.json"]
  card = json.loads((tmp_path / "torch" / "model_card.json").read_text())
  if stem == "cifar":
    model = (SupConResNet(18, head, 32, width=0.25) if method != "ce"
             else SupCEResNet(18, 10, width=0.25))
  else:
    model = TorchvisionResNet(50, head if method != "ce" else "classifier",
                              32 if method != "ce" else 10, width=0.25)
  assert card["torch"]["layout"] == ("SupContrast" if stem == "cifar" else "torchvision")
  assert card["step"] == 5 and card["config"] == original.config.to_dict()
  model.load_state_dict(torch.load(tmp_path / "torch" / "model.pth", weights_only=True),
                        strict=True)
  assert max(max_difference(model.eval(), original, original.image_size).values()) <= TOLERANCE
  flags = ["--fc", "head"] if (stem, head, method) == ("imagenet", "linear", "simclr") else []
  convert.main([str(tmp_path / "torch" / "model.pth"), "--out", str(tmp_path / "back"),
                "--method", method, *flags])
  back = trained.load_encoder(str(tmp_path / "back"))
  assert jax.tree.structure(back.variables) == jax.tree.structure(original.variables)
  for a, b in zip(jax.tree.leaves(back.variables), jax.tree.leaves(original.variables)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  # The card beside the .pth gives back the input the model was trained on (the reference's
  # defaults would give another std, and the ImageNet stem 224 px).
  for field in ("mean", "std", "image_size"):
    assert back.config.data[field] == original.config.data[field], field


class Hook:
  """Not a tensor or a plain container: weights-only loading refuses it."""


def _reference_r50(tmp_path) -> tuple[dict, str]:
  state = build(SupConResNet, 5, 50, "mlp", 16, width=0.125).state_dict()
  return state, str(tmp_path / "r50.pth")


@pytest.mark.parametrize("case,message", [
    ("missing", "no encoder.layer2.0.bn1.running_var (expected shape (16,))"),
    ("shape", "encoder.layer1.0.conv2.weight has shape (8, 8, 1, 3), expected (8, 8, 3, 3)"),
    ("extra", "unexpected key head.4.weight (shape (3,))"),
    ("blocks", "blocks per stage (3, 4, 5, 3) (bottleneck blocks) match no ResNet depth"),
    ("depth", "does not match ResNet-101 (cifar stem, width 0.125, mlp head, SupContrast "
              "layout): it has no encoder.layer3.6.conv1.weight (expected shape (32, 128, 1, 1))"),
    ("no_resnet", "it has no conv1.weight or encoder.conv1.weight (its first keys: a.weight)"),
    ("not_weights", "cannot read {source} as a PyTorch weights file: it holds a {hook}, not "
                    "only tensors"),
])
def test_malformed_state_dicts_give_a_one_line_error(tmp_path, capsys, case, message):
  state, source = _reference_r50(tmp_path)
  argv = [source, "--out", str(tmp_path / "out")]
  if case == "missing":
    del state["encoder.layer2.0.bn1.running_var"]
  elif case == "shape":
    state["encoder.layer1.0.conv2.weight"] = state["encoder.layer1.0.conv2.weight"][..., :1, :]
  elif case == "extra":
    state["head.4.weight"] = torch.zeros(3)
  elif case == "blocks":
    state = {k: v for k, v in state.items() if not k.startswith("encoder.layer3.5.")}
  elif case == "depth":
    argv += ["--depth", "101"]
  elif case == "no_resnet":
    state = {"a.weight": torch.zeros(1)}
  else:
    state = {"model": state, "opt": Hook()}  # a class of this module: code to run
  torch.save(state, source)
  err = run_main(convert.main, argv, capsys)
  assert message.format(source=source, hook=f"{Hook.__module__}.Hook") in err
  assert not (tmp_path / "out").exists()


def test_without_torch_the_commands_name_the_package(tmp_path, capsys, monkeypatch):
  state, source = _reference_r50(tmp_path)
  torch.save(state, source)
  random_export(tmp_path / "flax", "supcon", "cifar")
  monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed: import fails
  for main, argv in [(convert.main, [source, "--out", str(tmp_path / "a")]),
                     (export.main, ["--workdir", str(tmp_path / "flax"), "--out",
                                    str(tmp_path / "b"), "--format", "torch"])]:
    err = run_main(main, argv, capsys)
    assert "needs the package torch (pip install torch" in err


def test_a_converted_model_serves_embed_the_linear_and_robustness_stages(tmp_path, capsys):
  """The reference's SupConResNet-18 (width 1/8, for digits at 8x8 pixels), converted: the
  commands and stages that take an export take it."""
  model = build(SupConResNet, 6, 18, "mlp", 128, width=0.125)
  converted = str(tmp_path / "converted")
  convert.main([save({"model": model.state_dict()}, tmp_path / "w.pth"), "--out", converted])
  images = tmp_path / "images" / "a"
  images.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(images / f"{i}.png")
  embed.main(["--workdir", converted, "--images", str(images.parent), "--out",
              str(tmp_path / "emb.npz")])
  embedded = np.load(tmp_path / "emb.npz")["embeddings"]
  expected = trained.load_encoder(converted).embed(
      np.stack([np.asarray(Image.open(images / f"{i}.png")) for i in range(3)]))
  assert embedded.shape == (3, 64) and np.array_equal(embedded, expected)
  config = tiny_config("ce")  # the method is the encoder's: supcon
  config.stage = "linear"
  config.linear.encoder_workdir = converted
  result = experiment.train_and_evaluate(config, str(tmp_path / "transfer"))
  assert result["method"] == "supcon" and result["encoder_workdir"] == converted
  assert result["encoder_steps"] == 0 and 0 <= result["linear_top1"] <= 100
  config.stage = "robustness"
  config.robustness.update(corruptions=("contrast",), severities=(5,))
  scored = experiment.train_and_evaluate(config, str(tmp_path / "transfer"))["robustness"]
  assert scored["clean_top1"] == result["linear_top1"] and "contrast" in scored["top1"]
