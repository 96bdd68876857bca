"""End to end on tiny real data: every method writes its outputs, and a rerun resumes."""

import json
import os
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


def test_all_methods_write_outputs(tmp_path):
  workdir = str(tmp_path)
  results = experiment.train_and_evaluate(tiny_config("supcon,simclr,ce"), workdir)
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
    assert [r["step"] for r in rows[:2]] == [1, 2]
    for r in rows:
      assert {"step", "loss", "lr", "images_per_sec"} <= set(r)
    assert os.listdir(os.path.join(sub, "checkpoints")) == ["2"]
    scalars = _tensorboard_scalars(os.path.join(sub, "tensorboard"))
    assert scalars["loss"][:2] == [1, 2], scalars
  with open(os.path.join(workdir, "results.json")) as f:
    assert set(json.load(f)) == {"supcon", "simclr", "ce"}

  # A separate linear evaluation of a chosen pre-training checkpoint, in another workdir.
  linear = tiny_config("supcon")
  linear.stage = "linear"
  linear.pretrain_workdir = os.path.join(workdir, "supcon")
  linear.pretrain_step = 2
  again = experiment.train_and_evaluate(linear, os.path.join(workdir, "linear_only"))
  assert again["encoder_steps"] == 2
  assert 0.0 <= again["linear_top1"] <= 100.0
  linear.pretrain_step = 7
  with pytest.raises(FileNotFoundError, match="no checkpoint 7"):
    experiment.train_and_evaluate(linear, os.path.join(workdir, "linear_7"))


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


def test_rerun_resumes_at_the_saved_step_without_tensorflow(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config("supcon")
  config.stage = "pretrain"
  experiment.train_and_evaluate(config, workdir)
  config.epochs = 4 / 22
  # The second run: the core trainer on in-memory data where TensorFlow cannot be imported.
  subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, config.to_json(), workdir],
                 check=True, timeout=600)
  steps = [r["step"] for r in _jsonl(os.path.join(workdir, "metrics.jsonl"))]
  assert steps == [1, 2, 3, 4]  # the second run started at step 2, not 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_linear_stage_needs_a_pretraining_checkpoint(tmp_path):
  config = tiny_config("supcon")
  config.stage = "linear"
  with pytest.raises(FileNotFoundError, match="checkpoint"):
    experiment.train_and_evaluate(config, str(tmp_path))
