"""End to end on tiny real data: every method writes its outputs, and a rerun resumes."""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from supcon_jax import experiment
from tests.helpers import tiny_config, tiny_runs_config


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _tensorboard_scalars(logdir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  tags = acc.Tags()
  # clu writes scalars as TF2 summaries (tensors); older writers use the scalar plugin.
  return {t: [e.step for e in acc.Tensors(t)] for t in tags["tensors"]} or \
         {t: [e.step for e in acc.Scalars(t)] for t in tags["scalars"]}


def test_all_methods_write_outputs(tiny_runs, tmp_path):
  root, results = tiny_runs  # conftest: supcon and ce, 4 steps, stage all
  workdir = str(root)
  assert set(results) == {"supcon", "ce"}
  for method in results:
    sub = os.path.join(workdir, method)
    with open(os.path.join(sub, "results.json")) as f:
      saved = json.load(f)
    evaluation = "classifier" if method == "ce" else "linear"
    assert saved["method"] == method and saved["stage"] == "all"
    assert 0.0 <= saved[f"{evaluation}_top1"] <= saved[f"{evaluation}_top5"] <= 100.0
    assert 0.0 <= saved["knn_top1"] <= 100.0
    assert 0.0 <= saved["input_wait_fraction"] < 1.0
    rows = _jsonl(os.path.join(sub, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
      assert {"step", "loss", "lr", "images_per_sec", "input_wait_fraction"} <= set(r)
    assert sorted(os.listdir(os.path.join(sub, "checkpoints"))) == ["2", "4"]
    scalars = _tensorboard_scalars(os.path.join(sub, "tensorboard"))
    assert scalars["loss"] == scalars["input_wait_fraction"] == [1, 2, 3, 4], scalars
    # The linear stage logs apart, under the encoder's step (ce's own classifier needs none).
    linear_metrics = os.path.join(sub, "linear", "4", "metrics.jsonl")
    assert os.path.exists(linear_metrics) == (method != "ce")
    if method != "ce":
      assert [r["step"] for r in _jsonl(linear_metrics)] == [1, 2]
    with open(os.path.join(sub, "config.json")) as f:
      assert json.load(f)["method"] == method
  with open(os.path.join(workdir, "results.json")) as f:
    assert set(json.load(f)) == {"supcon", "ce"}

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


TRAINING = ("epochs", "train_time_s", "images_per_sec", "wall_time_s", "encoder_steps")


def _copy(tiny_runs, dest):
  """A copy of conftest's tiny runs, for tests that run stages in them again."""
  shutil.copytree(tiny_runs[0], dest)
  return dest


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_a_rerun_of_a_finished_run_keeps_its_figures(tiny_runs, tmp_path, caplog):
  root = _copy(tiny_runs, tmp_path / "runs")
  trained = _read(root / "supcon" / "results.json")
  caplog.set_level(logging.INFO)
  again = experiment.train_and_evaluate(tiny_runs_config("supcon"), str(root / "supcon"))
  assert "[supcon] nothing left to train: checkpoint 4" in caplog.text
  saved = _read(root / "supcon" / "results.json")
  assert saved == again
  for key in TRAINING:  # the figures of the run that trained, not of this one
    assert saved[key] == trained[key], key
  for key in ("linear_top1", "linear_top5", "knn_top1"):  # evaluated again: the same model
    assert saved[key] == trained[key], key
  assert saved["robustness"]["top1"] == trained["robustness"]["top1"]


def test_later_stages_keep_every_figure_earlier_ones_wrote(tiny_runs, tmp_path, capsys):
  root = _copy(tiny_runs, tmp_path / "runs")
  before = {m: _read(root / m / "results.json") for m in ("supcon", "ce")}
  tables = {}
  for stage in ("robustness", "linear"):
    config = tiny_runs_config("supcon,ce")
    config.stage = stage
    experiment.train_and_evaluate(config, str(root))
    tables[stage] = capsys.readouterr().out
    top = _read(root / "results.json")
    for method, earlier in before.items():
      saved = _read(root / method / "results.json")
      assert set(earlier) <= set(saved), (stage, method, set(earlier) - set(saved))
      assert top[method] == saved
      for key in TRAINING:
        assert saved[key] == earlier[key], (stage, method, key)
      assert saved["stage"] == ("linear" if stage == "linear" else "all")
  for table in tables.values():
    assert "nan" not in table and "| none |" not in table
  assert "| ce | classifier |" in tables["robustness"]
  assert "| ce | linear |" in tables["linear"]  # a linear classifier on ce's encoder, now


def test_a_transfer_evaluates_the_method_of_its_encoder_once(tiny_runs, tmp_path, caplog):
  root = tiny_runs[0]
  config = tiny_runs_config("supcon,ce")  # the digits recipe's two methods
  config.update(stage="linear")
  config.linear.encoder_workdir = str(root / "supcon")
  config.linear.encoder_step = 2
  caplog.set_level(logging.INFO)
  result = experiment.train_and_evaluate(config, str(tmp_path / "transfer"))
  assert "config.method='supcon,ce' is ignored" in caplog.text
  assert f"the model of {root / 'supcon'}, checkpoint 2" in caplog.text
  saved = _read(tmp_path / "transfer" / "results.json")
  assert saved == result and saved["method"] == "supcon"
  assert saved["encoder_workdir"] == str(root / "supcon") and saved["encoder_steps"] == 2
  assert not (tmp_path / "transfer" / "ce").exists()
  assert not (tmp_path / "transfer" / "supcon").exists()
  for key in ("epochs", "train_time_s", "images_per_sec", "wall_time_s"):  # no encoder trained
    assert key not in saved
  assert saved["linear_time_s"] > 0


@pytest.mark.parametrize("stage,field", [("all", "linear.batch_size"), ("pretrain", "batch_size"),
                                         ("all", "knn.k")])
def test_a_batch_or_k_beyond_the_training_split_stops_before_any_work(tmp_path, stage, field):
  config = tiny_config("supcon")
  config.update_from_flattened_dict({"stage": stage, field: 1440, "knn.num_train": 5000})
  with pytest.raises(ValueError, match=f"config.{field}=1440 is more than the 1437 training"):
    experiment.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()
