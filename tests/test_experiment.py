"""End to end on tiny real data: every method writes its outputs, and a rerun resumes."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from supcon_jax import config as config_lib, experiment


def tiny_config(method: str):
  c = config_lib.base_config()
  c.method = method
  c.data.source = "arrays"
  c.data.name = "digits"
  c.data.image_size = 8
  c.model.depth = 18
  c.model.width = 0.125
  c.batch_size = 64
  c.epochs = 2 / 22  # 22 steps per epoch on the 1,437 training digits: 2 steps
  c.linear.batch_size = 64
  c.linear.epochs = 2 / 22
  c.linear.augment = "cropflip"
  c.eval_every_epochs = 0
  c.knn.num_train = 256
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.embedding_plot = False
  return c


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _tensorboard_scalars(logdir):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  tags = acc.Tags()
  # clu writes scalars as TF2 summaries (tensors); older writers use the scalar plugin.
  return {t: [e.step for e in acc.Tensors(t)] for t in tags["tensors"]} or \
         {t: [e.step for e in acc.Scalars(t)] for t in tags["scalars"]}


def test_all_methods_write_outputs(tiny_runs, tmp_path):
  root, results = tiny_runs  # conftest: supcon, simclr and ce, 4 steps, stage all
  workdir = str(root)
  assert set(results) == {"supcon", "simclr", "ce"}
  for method in results:
    sub = os.path.join(workdir, method)
    with open(os.path.join(sub, "results.json")) as f:
      saved = json.load(f)
    evaluation = "classifier" if method == "ce" else "linear"
    assert saved["method"] == method and saved["stage"] == "all"
    assert 0.0 <= saved[f"{evaluation}_top1"] <= saved[f"{evaluation}_top5"] <= 100.0
    assert 0.0 <= saved["knn_top1"] <= 100.0
    rows = _jsonl(os.path.join(sub, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
      assert {"step", "loss", "lr", "images_per_sec"} <= set(r)
    assert sorted(os.listdir(os.path.join(sub, "checkpoints"))) == ["2", "4"]
    scalars = _tensorboard_scalars(os.path.join(sub, "tensorboard"))
    assert scalars["loss"] == [1, 2, 3, 4], scalars
    # The linear stage logs apart, under the encoder's step (ce's own classifier needs none).
    linear_metrics = os.path.join(sub, "linear", "4", "metrics.jsonl")
    assert os.path.exists(linear_metrics) == (method != "ce")
    if method != "ce":
      assert [r["step"] for r in _jsonl(linear_metrics)] == [1, 2]
    with open(os.path.join(sub, "config.json")) as f:
      assert json.load(f)["method"] == method
  with open(os.path.join(workdir, "results.json")) as f:
    assert set(json.load(f)) == {"supcon", "simclr", "ce"}

  # A separate linear evaluation of a chosen pre-training checkpoint, in another workdir.
  linear = tiny_config("supcon")
  linear.stage = "linear"
  linear.linear.encoder_workdir = os.path.join(workdir, "supcon")
  linear.linear.encoder_step = 2
  again = experiment.train_and_evaluate(linear, str(tmp_path / "linear_only"))
  assert again["encoder_steps"] == 2
  assert 0.0 <= again["linear_top1"] <= 100.0
  linear.linear.encoder_step = 7
  with pytest.raises(FileNotFoundError, match="7"):
    experiment.train_and_evaluate(linear, str(tmp_path / "linear_7"))


_WITHOUT_TENSORFLOW = """
import json, sys

# As if not installed: `import` raises ImportError and importlib.util.find_spec gives None.
for name in ("tensorflow", "tensorflow_datasets", "tensorboard"):
  sys.modules[name] = None
import ml_collections
from supcon_jax import experiment
config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
experiment.train_and_evaluate(config, sys.argv[2])
assert not [m for m, v in sys.modules.items() if m.startswith("tensorflow") and v is not None]
"""


def test_rerun_resumes_at_the_saved_step_without_tensorflow(tiny_runs, tmp_path):
  # The supcon run of tiny_runs, as if stopped after its checkpoint at step 2.
  trained = tiny_runs[0] / "supcon"
  shutil.copytree(trained / "checkpoints" / "2", tmp_path / "checkpoints" / "2")
  with open(trained / "metrics.jsonl") as f:
    (tmp_path / "metrics.jsonl").write_text("".join(f.readlines()[:2]))
  config = tiny_config("supcon")
  config.stage = "pretrain"
  config.epochs = 4 / 22
  # The second run: the core trainer on in-memory data where TensorFlow cannot be imported.
  subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, config.to_json(), str(tmp_path)],
                 check=True, timeout=600)
  steps = [r["step"] for r in _jsonl(tmp_path / "metrics.jsonl")]
  assert steps == [1, 2, 3, 4]  # the second run started at step 2, not 0
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  with open(trained / "metrics.jsonl") as f:  # and went on as the uninterrupted run did
    assert [r["loss"] for r in _jsonl(tmp_path / "metrics.jsonl")] == [
        json.loads(line)["loss"] for line in f][:4]


def test_linear_stage_needs_a_pretraining_checkpoint(tmp_path):
  config = tiny_config("supcon")
  config.stage = "linear"
  with pytest.raises(FileNotFoundError, match="neither a training workdir"):
    experiment.train_and_evaluate(config, str(tmp_path))
