"""Throughput and memory of the real trainer step: `python -m benchmarks.speed ...`.

  python -m benchmarks.speed --case step --depth 50 --stem cifar --image-size 32 --batch 512
  python -m benchmarks.speed --case loss --rows 16384 [--block-size 1024]
  python -m benchmarks.speed --case e2e --data-dir .data/train --depth 18
  python -m benchmarks.speed --suite reference [--data-dir .data/train] --json speed.json

The step is what `experiment` runs: the method's model and loss from `methods.py` (on-device
augmentation included), LARS from `optim.make_optimizer`, `train.make_step` with the state
donated, and a per-step key (drawn at `state.step` from the run's "pretrain" stream inside the
step). Inputs are random uint8 images sharded over the mesh with `sharding.to_global`; e2e
feeds the step from the image-folder source held in device memory instead.

Timing: the step is compiled ahead of time (`lower().compile()`, reported as compile s),
run for --warmup steps, then timed in --windows windows of --steps-per-window steps, each
window ending in `block_until_ready`; a step's time is the median window time over its
steps. Blocking after every step would leave the device idle while the host dispatches the
next one, a cost the training loop does not pay; a window keeps dispatch running ahead as
in `train.fit` and still gives a spread. Device-to-host transfers are disallowed while
timing, so a host sync that sneaks into the step fails the benchmark instead of slowing it.

MFU uses analytic FLOPs (`train_flops_per_image`: 2 x the MACs `models.forward_macs` and
`models.head_macs` count, x3 for forward + backward): XLA's cost_analysis() leaves cuDNN
convolutions out on GPU. Each suite case runs in its own process, so peak memory (a
process-wide high-water mark) and compile time belong to that case alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np

from supcon_jax import (
  augment,
  data,
  fileio,
  losses,
  methods,
  models,
  optim,
  results,
  rngs,
  sharding,
  train,
  validation,
)
from supcon_jax import config as config_lib
from supcon_jax.checks import one_of

CASES = ("step", "loss", "e2e")
GIB = 2**30
# Dense (no sparsity) datasheet TFLOP/s per device: (bfloat16, float32). float32 counts the
# TF32 tensor-core rate, which XLA's default precision uses for float32 convs and matmuls on
# GPU. The first substring of the device kind that matches wins.
PEAK_TFLOPS = (("H100 PCIe", (756.0, 378.0)), ("H100", (989.0, 494.7)),
               ("H200", (989.0, 494.7)), ("A100", (312.0, 156.0)))


@dataclasses.dataclass
class Case:
  """One benchmark: the flags of the command line, as a Python API."""
  case: str = "step"
  method: str = "supcon"  # supcon | simclr | ce
  depth: int = 50
  width: float = 1.0
  stem: str = "cifar"
  image_size: int = 32
  batch: int = 512  # samples per step; images per step = batch * views
  views: int = 2
  small_views: int = 0  # multi-crop: small crops per sample beside `views` (config.augment)
  small_size: int = 96
  dtype: str = "bfloat16"
  augment: str = "simaugment"
  optimizer: str = "lars"
  num_classes: int = 10
  rows: int = 16384  # loss case: anchors (samples * 2 views)
  block_size: int | None = None
  data_dir: str = ""
  devices: int | None = None  # None: every device
  donate: bool = True
  chunk_size: int = 0  # config.encoder_chunk_size: the model over the batch in chunks (0 = off)
  compile_only: bool = False  # compile the step and report XLA's memory; run nothing
  label: str = ""  # names the rows: "<label>_step" and "<label>_e2e", or the loss's "<label>"
  warmup: int = 5
  windows: int = 10
  steps_per_window: int = 5
  peak_tflops: float | None = None
  profile_dir: str = ""


# ------------------------------------------------------------------- analytic FLOPs


def train_flops_per_image(case: Case) -> float:
  """FLOPs of one image's training step: forward 2 x MACs, backward twice the forward."""
  encoder = models.forward_macs(case.depth, case.width, case.stem, case.image_size)
  feat = models.feature_dim(case.depth, case.width)
  if methods.get(case.method).contrastive:
    head = models.head_macs("mlp", feat, 128)
  else:  # the classifier
    head = models.head_macs("linear", feat, case.num_classes)
  return 3 * 2 * (encoder + head)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The datasheet dense rate of one device for this compute dtype, or None if unknown."""
  for name, (bf16, f32) in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else f32
  return None


# --------------------------------------------------------------------- measurement


def environment() -> dict[str, Any]:
  """The device, software versions and date a measurement belongs to."""
  devices = jax.devices()
  # "cuda 13000" style on GPU; the CPU client reports its own (non-CUDA) version string.
  platform_version = getattr(devices[0].client, "platform_version", "")
  return {"device_kind": devices[0].device_kind, "platform": devices[0].platform,
          "device_count": len(devices), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "platform_version": platform_version,
          "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _memory_stats(device) -> dict[str, int]:
  return device.memory_stats() or {}  # None on CPU


def _xla_memory(compiled) -> dict[str, int | None]:
  """XLA's static estimate of the compiled program's buffers (available on CPU too)."""
  m = compiled.memory_analysis()
  get = lambda name: None if m is None else int(getattr(m, name, 0))
  return {"xla_argument_bytes": get("argument_size_in_bytes"),
          "xla_output_bytes": get("output_size_in_bytes"),
          "xla_alias_bytes": get("alias_size_in_bytes"),
          "xla_temp_bytes": get("temp_size_in_bytes")}


def _time_windows(run: Callable[[int], None], case: Case) -> list[float]:
  """Seconds per step of each timed window; `run(k)` runs k steps and blocks on the last."""
  run(case.warmup)
  per_step = []
  with jax.transfer_guard_device_to_host("disallow"):
    for _ in range(case.windows):
      start = time.perf_counter()
      run(case.steps_per_window)
      per_step.append((time.perf_counter() - start) / case.steps_per_window)
  if case.profile_dir:
    with jax.profiler.trace(case.profile_dir):
      run(case.steps_per_window)
  return per_step


def _timing(per_step: list[float], images_per_step: int | None) -> dict[str, Any]:
  step_s = float(np.median(per_step))
  return {"step_ms": 1e3 * step_s, "step_ms_min": 1e3 * min(per_step),
          "step_ms_max": 1e3 * max(per_step),
          "images_per_s": None if images_per_step is None else images_per_step / step_s}


# ---------------------------------------------------------------------- the cases


def bench_config(case: Case) -> ml_collections.ConfigDict:
  """The trainer config the case describes (base_config with the case's fields)."""
  c = config_lib.base_config()
  c.method = case.method
  c.model.depth, c.model.width, c.model.stem = case.depth, case.width, case.stem
  c.model.dtype = case.dtype
  c.data.image_size, c.data.num_classes = case.image_size, case.num_classes
  c.augment.policy, c.augment.n_views = case.augment, case.views
  c.augment.small_views, c.augment.small_size = case.small_views, case.small_size
  c.loss.block_size = case.block_size
  c.optim.name = case.optimizer
  c.batch_size = case.batch
  c.encoder_chunk_size = case.chunk_size
  if case.case == "e2e":
    c.data.source, c.data.train_dir, c.data.in_memory = "folder", case.data_dir, True
  validation.validate(c)
  return c


def _model_name(case: Case) -> str:
  width = "" if case.width == 1 else f"x{case.width:g}"
  return f"R{case.depth}{width} {case.stem} {case.image_size}px {case.method}"


def _trainer(config: ml_collections.ConfigDict) -> tuple[methods.Method, Any, Any]:
  """(method, model, optimiser) of the trainer for `config`, as the experiment builds them."""
  method = methods.get(config.method)
  model = method.build_model(config, config.data.num_classes)
  tx, _ = optim.make_optimizer(config.optim, batch_size=config.batch_size, steps_per_epoch=100,
                               total_steps=10_000)
  return method, model, tx


def _abstract_inputs(case: Case, config, method, model, tx, mesh):
  """Shapes, dtypes and shardings of the step's inputs: what compiling needs, no arrays."""
  image_shape = (case.image_size, case.image_size, 3)

  def state():  # Method.initial_state without placing it
    params, stats = train.init_model(model, config.seed, image_shape, mesh)
    return train.new_state(params, stats, tx, method.initial_momentum(config, params, stats))

  place = lambda tree, where: jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where), tree)
  batch = {"image": jax.ShapeDtypeStruct((case.batch,) + image_shape, jnp.uint8),
           "label": jax.ShapeDtypeStruct((case.batch,), jnp.int32)}
  return (place(jax.eval_shape(state), sharding.replicated(mesh)),
          place(batch, sharding.batch_sharding(mesh)),
          place(jax.eval_shape(lambda: rngs.stream(config.seed, "pretrain")),
                sharding.replicated(mesh)))


def run_compile(case: Case) -> list[dict[str, Any]]:
  """Compiles the step for shapes no machine here need run, and reports XLA's buffers."""
  config = bench_config(case)
  mesh = sharding.make_mesh(case.devices)
  method, model, tx = _trainer(config)
  step = train.make_step(method.loss_fn(config, model, mesh), tx, mesh, donate=case.donate)
  start = time.perf_counter()
  compiled = step.lower(*_abstract_inputs(case, config, method, model, tx, mesh)).compile()
  return [{"case": "compile", "label": case.label, "model": _model_name(case),
           "batch": case.batch, "views": method.views(config),
           "small_views": method.small_views(config), "small_size": case.small_size,
           "dtype": case.dtype, "chunk_size": case.chunk_size, "devices": mesh.devices.size,
           "platform": mesh.devices.flat[0].platform,
           "compile_s": time.perf_counter() - start, **_xla_memory(compiled)}]


def _compiled_step(case: Case, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(compiled step, state, synthetic batch, rng, row fields) for the trainer's own step."""
  method, model, tx = _trainer(config)
  image_shape = (case.image_size, case.image_size, 3)
  start = time.perf_counter()
  state = method.initial_state(config, model, tx, image_shape, mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  views, small_views = method.views(config), method.small_views(config)
  step = train.make_step(method.loss_fn(config, model, mesh), tx, mesh, donate=case.donate)
  rng = np.random.default_rng(0)  # random pixels: zeros can run faster than real images
  batch = sharding.to_global(
      {"image": rng.integers(0, 256, (case.batch,) + image_shape, dtype=np.uint8),
       "label": rng.integers(0, case.num_classes, (case.batch,)).astype(np.int32)}, mesh)
  key = jax.device_put(rngs.stream(config.seed, "pretrain"), sharding.replicated(mesh))
  start = time.perf_counter()
  compiled = step.lower(state, batch, key).compile()
  fields = {"init_s": init_s, "compile_s": time.perf_counter() - start, "views": views,
            "small_views": small_views, **_xla_memory(compiled)}
  return compiled, state, batch, key, fields


class _Runner:
  """Runs the compiled step on a stream of batches, keeping the state and metrics on device."""

  def __init__(self, compiled, state, key):
    self.compiled, self.state, self.key = compiled, state, key
    self.pending = None  # the metrics, merged on the device as train.fit does
    self.donated = None

  def __call__(self, batches, k: int) -> None:
    for _ in range(k):
      old = jax.tree.leaves(self.state) if self.donated is None else None
      self.state, m = self.compiled(self.state, next(batches), self.key)
      if old is not None:  # donation worked if XLA reused (and so deleted) every input buffer
        self.donated = all(x.is_deleted() for x in old)
      self.pending = m if self.pending is None else self.pending.merge(m)
    jax.block_until_ready((self.state, self.pending))


def _repeat(x):
  while True:
    yield x


def _step_row(case: Case, fields: dict[str, Any], per_step: list[float], device,
              donated: bool | None) -> dict[str, Any]:
  images = case.batch * fields["views"]
  row = {"case": case.case, "label": f"{case.label}_{case.case}" if case.label else "",
         "model": _model_name(case), "batch": case.batch,
         "views": fields["views"], "images_per_step": images, "dtype": case.dtype,
         "augment": case.augment, "optimizer": case.optimizer, "donated": donated,
         "peak_bytes": _memory_stats(device).get("peak_bytes_in_use"),
         **_timing(per_step, images), **fields}
  row["gflop_per_image"] = train_flops_per_image(case) / 1e9
  # Multi-crop's small views (counted in no images/s) add their own FLOPs to each sample.
  small = fields.get("small_views", 0) / fields["views"] * train_flops_per_image(
      dataclasses.replace(case, image_size=case.small_size)) / 1e9
  row["small_views"], row["small_size"] = fields.get("small_views", 0), case.small_size
  peak = case.peak_tflops or peak_tflops(device.device_kind, case.dtype)
  row["peak_tflops"] = peak
  row["mfu"] = (None if peak is None else
                (row["gflop_per_image"] + small) * 1e9 * row["images_per_s"]
                / (peak * 1e12 * row["devices"]))
  return row


def run_step(case: Case) -> list[dict[str, Any]]:
  """The full trainer step on synthetic data; with case.case == "e2e" also fed by the folder."""
  config = bench_config(case)
  mesh = sharding.make_mesh(case.devices)
  device = mesh.devices.flat[0]
  compiled, state, batch, key, fields = _compiled_step(case, config, mesh)
  fields["devices"] = mesh.devices.size
  runner = _Runner(compiled, state, key)
  synthetic = _repeat(batch)
  per_step = _time_windows(lambda k: runner(synthetic, k), case)
  step = _step_row(dataclasses.replace(case, case="step"), fields, per_step, device,
                   runner.donated)
  if case.case != "e2e":
    return [step]
  start = time.perf_counter()
  source = data.make_source(config.data, split="train", global_batch=case.batch, mesh=mesh,
                            seed=0)
  load_s = time.perf_counter() - start
  stream = source.train_batches(0)
  per_step = _time_windows(lambda k: runner(stream, k), case)
  e2e = _step_row(case, fields, per_step, device, runner.donated)
  e2e.update(load_s=load_s, dataset_images=source.num_examples,
             step_images_per_s=step["images_per_s"],
             ratio_to_step=e2e["images_per_s"] / step["images_per_s"])
  return [step, e2e]


def run_loss(case: Case) -> list[dict[str, Any]]:
  """supcon_loss forward + backward on random unit features [rows / 2, 2, 128]."""
  if case.rows < 2 or case.rows % 2:
    raise ValueError(f"--rows={case.rows} must be a positive even number (2 views per sample)")
  device = jax.devices()[0]
  k_feat, k_label = jax.random.split(jax.random.key(0))
  with jax.default_device(device):
    features = jax.random.normal(k_feat, (case.rows // 2, 2, 128), jnp.float32)
    features /= jnp.linalg.norm(features, axis=-1, keepdims=True)
    labels = jax.random.randint(k_label, (case.rows // 2,), 0, case.num_classes)
  jax.block_until_ready((features, labels))
  in_use = _memory_stats(device).get("bytes_in_use")
  loss = functools.partial(losses.supcon_loss, temperature=0.1, block_size=case.block_size)
  fn = jax.jit(jax.value_and_grad(loss))
  start = time.perf_counter()
  compiled = fn.lower(features, labels).compile()
  compile_s = time.perf_counter() - start

  def run(k: int) -> None:
    jax.block_until_ready([compiled(features, labels) for _ in range(k)])

  per_step = _time_windows(run, case)
  peak = _memory_stats(device).get("peak_bytes_in_use")
  block = f" block {case.block_size}" if case.block_size else ""
  return [{"case": "loss", "label": case.label, "model": f"supcon loss {case.rows} rows{block}",
           "batch": case.rows // 2, "views": 2, "dtype": "float32", "rows": case.rows,
           "block_size": case.block_size, "devices": 1, "compile_s": compile_s, "peak_bytes": peak,
           "peak_beyond_inputs_bytes": None if peak is None else peak - in_use,
           **_timing(per_step, None), **_xla_memory(compiled), "mfu": None}]


def run_case(case: Case) -> list[dict[str, Any]]:
  """The rows of one case: step -> [step]; loss -> [loss]; e2e -> [step-only, e2e]."""
  if case.case not in CASES:
    raise ValueError(f"--case={case.case!r}; expected one of {CASES}")
  if case.case == "e2e" and not case.data_dir:
    raise ValueError("--case e2e needs --data-dir (an image folder, one sub-folder per class)")
  for name in ("warmup", "windows", "steps_per_window"):
    if getattr(case, name) < (0 if name == "warmup" else 1):
      raise ValueError(f"--{name.replace('_', '-')}={getattr(case, name)} is too small")
  if case.compile_only:
    if case.case != "step":
      raise ValueError("--compile-only compiles the training step: use it with --case step")
    return run_compile(case)
  return run_loss(case) if case.case == "loss" else run_step(case)


# -------------------------------------------------------------------------- suites

# The PyTorch SupContrast reference on one H100 (bf16, channels-last; the faster of eager and
# torch.compile) and what this codebase must reach on the same GPU. Steps and e2e are in
# images/s (higher is better), the loss in ms forward + backward (lower is better).
REFERENCE = {
    "r50_cifar_step": {"images_per_s": 18_355, "target": {"images_per_s": 28_000}},
    "r18_cifar_step": {"images_per_s": 48_428, "target": {"images_per_s": 100_000}},
    "r50_224_step": {"images_per_s": 4_985, "target": {"images_per_s": 6_500}},
    "r50_cifar_e2e": {"images_per_s": 12_842, "target": {"ratio_to_step": 0.95}},
    "r18_cifar_e2e": {"images_per_s": 17_407, "target": {"ratio_to_step": 0.95}},
    "loss_2048": {"step_ms": 1.74},
    "loss_8192": {"step_ms": 4.57},
    "loss_16384": {"step_ms": 17.26, "target": {"step_ms": 4.0,
                                                "peak_beyond_inputs_bytes": GIB}},
}
# For each target field: does a larger measured value meet it?
_HIGHER_IS_BETTER = {"images_per_s": True, "ratio_to_step": True, "step_ms": False,
                     "peak_beyond_inputs_bytes": False}
SUITES = ("reference",)


def suite_cases(name: str, data_dir: str = "") -> list[list[str]]:
  """The command-line arguments of each case of a suite.

  "reference": the rows of `REFERENCE`: ResNet-50 and ResNet-18 CIFAR steps at 512 x 2 views,
  ResNet-50 at 224 px with 128 x 2, the loss alone at 2,048 / 8,192 / 16,384 rows (and
  16,384 with row blocks), and with `data_dir` the CIFAR steps fed from the image folder.
  """
  one_of("--suite", name, SUITES)
  cifar = ["--stem", "cifar", "--image-size", "32", "--batch", "512", "--views", "2",
           "--dtype", "bfloat16"]
  # With the CIFAR folder, e2e also times the step alone: one compile gives both rows.
  kind = ["--case", "e2e", "--data-dir", data_dir] if data_dir else ["--case", "step"]
  cases = [kind + ["--depth", "50", "--label", "r50_cifar"] + cifar,
           kind + ["--depth", "18", "--label", "r18_cifar"] + cifar,
           ["--case", "step", "--depth", "50", "--stem", "imagenet", "--image-size", "224",
            "--batch", "128", "--views", "2", "--dtype", "bfloat16", "--label", "r50_224"]]
  cases += [["--case", "loss", "--rows", str(rows), "--label", f"loss_{rows}"]
            for rows in (2048, 8192, 16384)]
  # Row blocks keep the [rows, rows] logits out of memory for the backward pass.
  cases += [["--case", "loss", "--rows", "16384", "--block-size", str(b), "--label",
             "loss_16384"] for b in (1024, 2048)]
  return cases


def compare_to_reference(row: dict[str, Any]) -> dict[str, Any]:
  """The row with its reference figures, `speedup` (> 1: faster than the reference) and
  `meets_target` (None where the reference sets no target or a figure is missing)."""
  ref = REFERENCE.get(row.get("label", ""))
  if ref is None or "error" in row:
    return row
  row = dict(row, reference=ref)
  if "images_per_s" in ref:
    row["speedup"] = row["images_per_s"] / ref["images_per_s"]
  else:
    row["speedup"] = ref["step_ms"] / row["step_ms"]
  checks = [None if row.get(k) is None else (row[k] >= v) == _HIGHER_IS_BETTER[k]
            or row[k] == v for k, v in ref.get("target", {}).items()]
  row["meets_target"] = None if not checks or None in checks else all(checks)
  return row


def run_suite(name: str, data_dir: str, passthrough: list[str],
              json_path: str = "") -> tuple[dict, list[dict]]:
  """Each case in a fresh process: its own peak memory, compile time and device memory.

  The parent never starts a JAX backend, which on GPU would hold most of the memory. The
  JSON is rewritten after every case, so a run cut short keeps the cases it finished.
  """
  environment_, rows = {}, []
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [root, os.environ.get("PYTHONPATH")])))
  for argv in suite_cases(name, data_dir):
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "rows.json")
      cmd = [sys.executable, "-m", "benchmarks.speed", *argv, *passthrough, "--json", out]
      print("$ python", " ".join(cmd[1:-2]), flush=True)
      done = subprocess.run(cmd, check=False, env=env)
      if done.returncode or not os.path.exists(out):
        rows.append({"case": argv[1], "model": " ".join(argv), "error": done.returncode})
      else:
        with open(out, encoding="utf-8") as f:
          result = json.load(f)
        environment_ = environment_ or result["environment"]
        rows += [compare_to_reference(r) for r in result["rows"]]
    if json_path:
      write_json(json_path, environment_, rows)
  return environment_, rows


# ---------------------------------------------------------------------------- output


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
  return "n/a" if value is None else format(value / scale, spec)


def _views(row: dict[str, Any]) -> str:
  small = row.get("small_views")
  return f"{row['batch']} x {row['views']}" + (
      f" + {small} x {row['small_size']} px" if small else "")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A Markdown table of the rows, as docs/performance.md shows them."""
  header = ["case", "model", "batch x views", "dtype", "images/s", "step ms", "compile s",
            "peak GiB", "MFU", "vs reference", "note"]
  lines = []
  for r in rows:
    if "error" in r:
      lines.append([r["case"], r["model"], "", "", f"failed (exit {r['error']})"]
                   + [""] * (len(header) - 5))
      continue
    if r["case"] == "compile":
      lines.append([r["case"], r["model"], _views(r), r["dtype"], "—", "—",
                    f"{r['compile_s']:.1f}", "—", "—", "",
                    f"chunk {r['chunk_size'] or 'off'}: XLA temp "
                    f"{_fmt(r['xla_temp_bytes'], '.2f', GIB)} GiB, arguments "
                    f"{_fmt(r['xla_argument_bytes'], '.2f', GIB)} GiB ({r['platform']})"])
      continue
    note = ""
    if r["case"] == "e2e":
      note = f"{100 * r['ratio_to_step']:.1f}% of step-only; load {r['load_s']:.0f} s"
    elif r["case"] == "loss":
      note = (f"beyond inputs {_fmt(r['peak_beyond_inputs_bytes'], '.3f', GIB)} GiB; "
              f"XLA temp {_fmt(r['xla_temp_bytes'], '.3f', GIB)} GiB")
    mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
    speedup = "" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
    lines.append([r["case"], r["model"], _views(r), r["dtype"],
                  _fmt(r.get("images_per_s"), ",.0f"), f"{r['step_ms']:.2f}",
                  f"{r['compile_s']:.1f}", _fmt(r["peak_bytes"], ".2f", GIB), mfu, speedup,
                  note])
  return results.markdown_table(header, lines)


def format_environment(env: dict[str, Any]) -> str:
  """One line: devices, platform, versions, date and XLA flags of a measurement."""
  return (f"{env.get('device_count', '?')} x {env.get('device_kind', '?')} "
          f"({env.get('platform', '?')} {env.get('platform_version', '')}), "
          f"jax {env.get('jax', '?')}, jaxlib {env.get('jaxlib', '?')}, {env.get('date', '?')}, "
          f"XLA_FLAGS={env.get('xla_flags', '')!r}")


def write_json(path: str, env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
  """The environment, the command line and the rows, as one JSON file."""
  fileio.write_json(path, {"environment": env, "command": sys.argv, "rows": rows})


# ------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
  d = Case()
  p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--case", choices=CASES, default=d.case)
  p.add_argument("--suite", choices=SUITES, help="run a table of cases, each in its own process")
  p.add_argument("--method", choices=methods.METHODS, default=d.method)
  p.add_argument("--depth", type=int, choices=models.DEPTHS, default=d.depth)
  p.add_argument("--width", type=float, default=d.width, help="channel multiplier")
  p.add_argument("--stem", choices=models.STEMS, default=d.stem)
  p.add_argument("--image-size", type=int, default=d.image_size)
  p.add_argument("--batch", type=int, default=d.batch, help="samples per step (global)")
  p.add_argument("--views", type=int, default=d.views)
  p.add_argument("--small-views", type=int, default=d.small_views,
                 help="multi-crop: small crops per sample beside --views (config.augment)")
  p.add_argument("--small-size", type=int, default=d.small_size,
                 help="multi-crop: the small crops' side in pixels")
  p.add_argument("--dtype", choices=models.DTYPES, default=d.dtype,
                 help="compute dtype; parameters stay float32")
  p.add_argument("--augment", choices=augment.POLICIES, default=d.augment)
  p.add_argument("--optimizer", choices=optim.OPTIMIZERS, default=d.optimizer)
  p.add_argument("--num-classes", type=int, default=d.num_classes)
  p.add_argument("--rows", type=int, default=d.rows, help="loss case: anchor rows")
  p.add_argument("--block-size", type=int, default=d.block_size,
                 help="loss row blocking (config loss.block_size)")
  p.add_argument("--data-dir", default=d.data_dir, help="e2e: image folder (CIFAR-10 train/)")
  p.add_argument("--devices", type=int, default=d.devices, help="first N devices (default all)")
  p.add_argument("--no-donate", dest="donate", action="store_false",
                 help="do not donate the state (to measure what donation saves)")
  p.add_argument("--chunk-size", type=int, default=d.chunk_size,
                 help="config.encoder_chunk_size: the model in chunks of N images (0 = off)")
  p.add_argument("--compile-only", action="store_true",
                 help="compile the step and report XLA's temp / argument / output bytes "
                      "(xla_temp_bytes in the JSON) without running it: memory for shapes no "
                      "machine here could run, read on a CPU")
  p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps after compiling")
  p.add_argument("--windows", type=int, default=d.windows)
  p.add_argument("--steps-per-window", type=int, default=d.steps_per_window)
  p.add_argument("--peak-tflops", type=float, default=d.peak_tflops,
                 help="per-device peak for MFU (default: datasheet rate of the device kind)")
  p.add_argument("--profile-dir", default=d.profile_dir,
                 help="also trace one window with jax.profiler into this folder")
  p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before JAX starts; "
                 "write it with '=': --xla-flags=\"--xla_gpu_autotune_level=4\"")
  p.add_argument("--label", default="", help="names the rows (a suite's key into REFERENCE)")
  p.add_argument("--json", default="", help="write the environment and rows here")
  return p


def _passthrough(args: argparse.Namespace, argv: Sequence[str]) -> list[str]:
  """Every case flag given with a suite, handed on to each case (after the case's own flags,
  so it wins): the timing, the devices, the MFU peak, or a smaller model for a dry run."""
  switches = {"donate": "--no-donate", "compile_only": "--compile-only"}  # flags alone
  out = []
  for field in dataclasses.fields(Case):
    flag = switches.get(field.name, f"--{field.name.replace('_', '-')}")
    given = any(a == flag or a.startswith(flag + "=") for a in argv)
    if field.name in ("case", "data_dir", "label") or not given:
      continue
    out += [flag] if field.name in switches else [flag, str(getattr(args, field.name))]
  return out


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Runs the case or suite the command line names; prints and returns its rows."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = _parser().parse_args(argv)
  if args.xla_flags:  # read when the backend starts, so only effective before any JAX work
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
  if args.suite:
    env, rows = run_suite(args.suite, args.data_dir, _passthrough(args, argv), args.json)
  else:
    case = Case(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Case)})
    env = environment()
    rows = run_case(case)
  print(format_environment(env))
  print(format_table(rows), flush=True)
  if args.json:
    write_json(args.json, env, rows)
  return rows


if __name__ == "__main__":
  try:
    main()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
