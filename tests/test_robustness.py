"""Corruption robustness as a stage, the corruption errors of Hendrycks & Dietterich, and
linear evaluation transferred to another dataset."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from supcon_jax import config as config_lib
from supcon_jax import corruptions, experiment, results, robustness
from tests.helpers import tiny_config

# What conftest's tiny runs were scored on.
CORRUPTIONS, SEVERITIES = ("gaussian_noise", "contrast"), (1, 5)


def test_every_method_gets_its_robustness_block_and_pictures(tiny_runs):
  root, results = tiny_runs
  for method in ("supcon", "ce"):
    r = results[method]["robustness"]
    assert set(r["top1"]) == set(CORRUPTIONS) and r["severities"] == list(SEVERITIES)
    table = [v for row in r["top1"].values() for v in row.values()]
    assert all(0 <= v <= 100 for v in table) and r["mean_top1"] == pytest.approx(np.mean(table))
    assert 0 <= r["clean_top1"] <= 100
    saved = json.loads((root / method / "results.json").read_text())["robustness"]
    assert saved["top1"] == r["top1"]
    for picture in ("robustness.png", "corruptions.png"):
      assert (root / method / picture).read_bytes()[:4] == b"\x89PNG"
  assert (root / "robustness.png").read_bytes()[:4] == b"\x89PNG"  # every method in one


def test_the_cross_entropy_run_is_the_baseline_of_the_others(tiny_runs):
  root, results = tiny_runs
  ours, base = results["supcon"]["robustness"], results["ce"]["robustness"]
  assert ours["baseline"] == "ce" and "mce" not in base
  for c in CORRUPTIONS:  # Hendrycks & Dietterich's definitions, written out
    err = [100 - ours["top1"][c][str(s)] for s in SEVERITIES]
    err_base = [100 - base["top1"][c][str(s)] for s in SEVERITIES]
    assert ours["corruption_error"][c] == pytest.approx(100 * sum(err) / sum(err_base))
    drop = sum(e - (100 - ours["clean_top1"]) for e in err)
    drop_base = sum(e - (100 - base["clean_top1"]) for e in err_base)
    if drop_base > 0:
      assert ours["relative_corruption_error"][c] == pytest.approx(100 * drop / drop_base)
    else:  # the baseline is not hurt by c: undefined
      assert np.isnan(ours["relative_corruption_error"][c])
  assert ours["mce"] == pytest.approx(np.mean([ours["corruption_error"][c] for c in CORRUPTIONS]))
  on_disk = json.loads((root / "results.json").read_text())["supcon"]["robustness"]
  assert on_disk["mce"] == pytest.approx(ours["mce"])


def test_corruption_errors_against_a_baseline_by_hand():
  ours = {"clean_top1": 90.0, "top1": {"fog": {"1": 80.0, "2": 70.0}, "snow": {"1": 60.0}}}
  base = {"clean_top1": 80.0, "top1": {"fog": {"1": 60.0, "2": 50.0}, "pixelate": {"1": 1.0}}}
  got = robustness.corruption_errors(ours, base)
  assert got["corruption_error"] == {"fog": pytest.approx(100 * (20 + 30) / (40 + 50))}
  assert got["relative_corruption_error"]["fog"] == pytest.approx(100 * (10 + 20) / (20 + 30))
  assert got["mce"] == got["corruption_error"]["fog"] and got["mce_over"] == ["fog"]
  assert got["relative_mce"] == got["relative_corruption_error"]["fog"]
  # A corruption that does not hurt the baseline has no relative CE; the mean skips it.
  ours["top1"]["snow"], base["top1"]["snow"] = {"1": 70.0}, {"1": 85.0}
  got = robustness.corruption_errors(ours, base)
  assert np.isnan(got["relative_corruption_error"]["snow"])
  assert got["relative_mce_over"] == ["fog"] and got["mce_over"] == ["fog", "snow"]
  assert got["relative_mce"] == pytest.approx(100 * (10 + 20) / (20 + 30))
  with pytest.raises(ValueError, match="share no corruption"):
    robustness.corruption_errors(ours, {"clean_top1": 1.0, "top1": {"zoom_blur": {}}})


def test_extra_corruptions_never_enter_the_benchmark_means():
  # speckle_noise, an extra, with a huge error next to two of the benchmark's: the mCE,
  # relative mCE and mean top-1 stay those of fog and snow, by hand; the extra has its own.
  ours = {"clean_top1": 90.0, "severities": [1, 2],
          "top1": {"fog": {"1": 80.0, "2": 70.0}, "snow": {"1": 60.0, "2": 50.0},
                   "speckle_noise": {"1": 0.0, "2": 0.0}}}
  base = {"clean_top1": 80.0,
          "top1": {"fog": {"1": 60.0, "2": 50.0}, "snow": {"1": 70.0, "2": 40.0},
                   "speckle_noise": {"1": 79.0, "2": 78.0}}}
  got = robustness.corruption_errors(ours, base)
  fog, snow = 100 * (20 + 30) / (40 + 50), 100 * (40 + 50) / (30 + 60)
  assert got["mce"] == pytest.approx((fog + snow) / 2) and got["mce_over"] == ["fog", "snow"]
  relative_fog, relative_snow = 100 * (10 + 20) / (20 + 30), 100 * (30 + 40) / (10 + 40)
  assert got["relative_mce"] == pytest.approx((relative_fog + relative_snow) / 2)
  assert got["extra_mce"] == pytest.approx(100 * (100 + 100) / (21 + 22))
  assert got["extra_mce_over"] == ["speckle_noise"]
  assert robustness._top1_means(ours["top1"]) == {
      "mean_top1": (80 + 70 + 60 + 50) / 4, "mean_top1_over": ["fog", "snow"],
      "extra_mean_top1": 0.0, "extra_mean_top1_over": ["speckle_noise"]}
  assert results.severity_means(ours) == [(80 + 60) / 2, (70 + 50) / 2]
  # Without extras, no extra_ figures.
  del ours["top1"]["speckle_noise"]
  assert not any(k.startswith("extra_") for k in robustness.corruption_errors(ours, base))


def test_imagenet_c_errors_are_normalised_by_alexnets_published_ones():
  # Made-up ImageNet-C results against AlexNet's errors, by hand. AlexNet's, from
  # github.com/hendrycks/robustness issue #10: fog at severities 1, 2: 67.474%, 76.05%;
  # brightness at 1: 45.14%; clean: 43.478% (torchvision's AlexNet, top-1 56.522%).
  ours = {"clean_top1": 76.0, "severities": [1, 2],
          "top1": {"fog": {"1": 60.0, "2": 50.0}, "brightness": {"1": 70.0},
                   "saturate": {"1": 1.0}}}  # an extra: AlexNet has no published errors
  got = robustness.alexnet_errors(ours)
  fog = 100 * (40 + 50) / (67.474 + 76.05)
  brightness = 100 * 30 / 45.14
  assert got["alexnet_corruption_error"] == {"fog": pytest.approx(fog),
                                             "brightness": pytest.approx(brightness)}
  assert got["alexnet_mce"] == pytest.approx((fog + brightness) / 2)
  relative_fog = 100 * ((40 - 24) + (50 - 24)) / ((67.474 - 43.478) + (76.05 - 43.478))
  relative_brightness = 100 * (30 - 24) / (45.14 - 43.478)
  assert got["alexnet_relative_mce"] == pytest.approx((relative_fog + relative_brightness) / 2)
  assert got["alexnet_mce_over"] == ["fog", "brightness"]
  assert not any(k.startswith("alexnet_extra") for k in got)
  # AlexNet's own errors give 100 on every corruption, as the paper's Table 1.
  alexnet = robustness.alexnet_errors(robustness.ALEXNET)
  assert alexnet["alexnet_mce"] == pytest.approx(100) and len(alexnet["alexnet_mce_over"]) == 15
  assert alexnet["alexnet_relative_mce"] == pytest.approx(100)
  # Which runs get them: ImageNet under ImageNet-C's corruptions only.
  config = config_lib.base_config()
  config.data.update(source="tfds", name="imagenet2012", image_size=224)
  assert robustness.uses_alexnet(config) and robustness.benchmark(config) == "ImageNet-C"
  config.data.update(name="cifar10", image_size=32)
  assert not robustness.uses_alexnet(config) and robustness.benchmark(config) == "CIFAR-10-C"
  config.data.update(source="folder", image_size=224)  # any 224-px folder: no AlexNet
  assert not robustness.uses_alexnet(config) and robustness.benchmark(config) == "ImageNet-C"


def test_robustness_table_says_what_normalises_each_figure():
  block = {"clean_top1": 70.0, "severities": [1], "top1": {"fog": {"1": 50.0}},
           "mean_top1": 50.0, "mce": 90.0, "relative_mce": 80.0, "baseline": "ce"}
  imagenet = dict(block, extra_mean_top1=40.0, alexnet_mce=60.0, alexnet_relative_mce=55.0)
  text = results.run_tables({"supcon": {"robustness": imagenet}, "ce": {"robustness": block}})
  assert ("Under corruption (top-1 in %, averaged over the benchmark's corruptions; extra "
          "top-1 over ImageNet-C's extra corruptions, never in those means; mCE and relative "
          "mCE in %, lower is better, normalised by the errors of the run named under "
          "baseline; AlexNet's by AlexNet's published ImageNet-C errors, as the paper's):"
          ) in text
  assert ("| method | clean top-1 | severity 1 | corrupted top-1 | extra top-1 | mCE | "
          "relative mCE | baseline | AlexNet mCE | AlexNet relative mCE |") in text
  assert "| supcon | 70.00 | 50.00 | 50.00 | 40.00 | 90.0 | 80.0 | ce | 60.0 | 55.0 |" in text
  assert "| ce | 70.00 | 50.00 | 50.00 | – | 90.0 | 80.0 | ce | – | – |" in text
  assert "(AlexNet's published errors are ImageNet-C's only)" in results.run_tables(
      {"ce": {"robustness": block}})


def test_frost_without_its_photographs_is_skipped_saying_what_is_missing(monkeypatch, caplog):
  monkeypatch.setattr(corruptions.weather, "frost_dir", lambda: None)
  config = tiny_config("supcon")
  with caplog.at_level(logging.WARNING):
    assert robustness._available(config, ("fog", "frost", "snow")) == ("fog", "snow")
  assert [r.getMessage() for r in caplog.records] == [
      "robustness: frost skipped: the reference's frost photographs are not installed "
      "(`pip install --no-deps imagecorruptions` ships them)"]
  config.robustness.corruptions = ("frost",)
  experiment.validate(config)  # a run that asks for it is not refused: it skips it


def test_robustness_stage_on_a_finished_workdir_gives_the_same_numbers(tiny_runs):
  root, results = tiny_runs
  config = tiny_config("supcon")
  config.stage = "robustness"
  config.robustness.update(corruptions=CORRUPTIONS, severities=SEVERITIES,
                           baseline_workdir=str(root / "ce"))
  again = experiment.train_and_evaluate(config, str(root / "supcon"))["robustness"]
  first = results["supcon"]["robustness"]
  assert again["top1"] == first["top1"] and again["clean_top1"] == first["clean_top1"]
  assert again["mce"] == pytest.approx(first["mce"])
  saved = json.loads((root / "supcon" / "results.json").read_text())
  assert saved["linear_top1"] == results["supcon"]["linear_top1"]  # the rest is kept
  config.robustness.baseline_workdir = str(root / "nowhere")
  with pytest.raises(FileNotFoundError):
    experiment.train_and_evaluate(config, str(root / "supcon"))


def _colour_folder(root, size=16):
  """Another dataset: four colour classes (not digits) at another image size."""
  rng = np.random.default_rng(0)
  colours = [(0, 0, 0), (220, 0, 0), (0, 220, 0), (0, 0, 220)]
  for c, colour in enumerate(colours):
    (root / f"colour{c}").mkdir(parents=True)
    for i in range(24):
      pixels = np.clip(np.array(colour) + rng.integers(0, 35, (size, size, 3)), 0, 255)
      Image.fromarray(pixels.astype(np.uint8)).save(root / f"colour{c}" / f"{i}.png")
  return root


def test_linear_evaluation_transfers_to_another_dataset(tiny_runs, tmp_path):
  root, _ = tiny_runs
  config = tiny_config("supcon")
  config.stage = "linear"
  config.linear.encoder_workdir = str(root / "supcon")
  config.data.update(source="folder", train_dir=str(_colour_folder(tmp_path / "colours")),
                     num_classes=4, image_size=16, val_per_class=8, in_memory=True)
  config.batch_size = config.linear.batch_size = 32
  config.linear.update(epochs=20.0, augment="none")
  config.linear.optim.base_lr = 4.0  # x 32 / 256: 0.5
  # Scored under corruption too: robustness on an image folder.
  config.robustness.update(enabled=True, corruptions=("contrast",), severities=(1, 5))
  experiment.validate(config)
  result = experiment.train_and_evaluate(config, str(tmp_path / "transfer"))
  assert result["encoder_steps"] == 4 and result["linear_top1"] > 50.0  # chance: 25%
  contrast = result["robustness"]["top1"]["contrast"]
  assert result["robustness"]["clean_top1"] == result["linear_top1"]
  assert set(contrast) == {"1", "5"} and all(0 <= v <= 100 for v in contrast.values())
  # The robustness stage on that workdir: the encoder from encoder_workdir, the classifier
  # from the workdir itself, the same numbers.
  stage = config.copy_and_resolve_references()
  stage.stage = "robustness"
  again = experiment.train_and_evaluate(stage, str(tmp_path / "transfer"))["robustness"]
  assert again["top1"] == result["robustness"]["top1"]
  # An encoder with the ImageNet stem (it needs 32 pixels a side): 16 cannot feed it.
  imagenet = tiny_config("supcon")
  imagenet.update_from_flattened_dict({"stage": "pretrain", "model.stem": "imagenet",
                                       "data.image_size": 32, "model.width": 0.0625,
                                       "epochs": 1 / 22, "augment.policy": "none"})
  experiment.train_and_evaluate(imagenet, str(tmp_path / "imagenet_stem"))
  config.linear.encoder_workdir = str(tmp_path / "imagenet_stem")
  with pytest.raises(ValueError, match="image_size=16 cannot feed the encoder of .*at least 32"):
    experiment.train_and_evaluate(config, str(tmp_path / "too_small"))
  config.linear.encoder_workdir = str(tmp_path / "no_such_run")
  with pytest.raises(FileNotFoundError, match="no_such_run"):
    experiment.train_and_evaluate(config, str(tmp_path / "missing"))
  config.linear.encoder_workdir, config.linear.encoder_step = str(root / "supcon"), 5
  with pytest.raises(FileNotFoundError, match="5"):
    experiment.train_and_evaluate(config, str(tmp_path / "missing_step"))


class _MeanColour:
  """A stand-in for a trained model: r is the mean colour (the logits: its first two)."""

  def outputs(self, images, names):
    assert names == ("repr",)
    return {"repr": images.astype(np.float32).mean(axis=(1, 2))}


def test_tfds_corrupted_datasets_are_read_through_the_tfds_source(monkeypatch):
  import tensorflow_datasets as tfds

  from supcon_jax import evaluate, sharding
  config = config_lib.base_config()
  config.data.update(source="tfds", name="cifar10", image_size=32, in_memory=True)
  config.batch_size = 16
  config.robustness.update(corruptions=("gaussian_noise", "frost"), severities=(1, 3))
  assert robustness.uses_tfds(config)
  assert robustness.corruption_names(config) == ("gaussian_noise", "frost")
  config.robustness.corruptions = ()
  assert robustness.corruption_names(config) == robustness.BENCHMARK + robustness.EXTRA
  config.robustness.corruptions = ("gaussian_noise", "frost")
  mesh = sharding.make_mesh()
  model = _MeanColour()
  seen, original = [], robustness.data.make_source

  def make_source(data_config, **kwargs):
    seen.append((data_config.name, data_config.eval_split, data_config.in_memory))
    return original(data_config, **kwargs)

  monkeypatch.setattr(robustness.data, "make_source", make_source)
  with tfds.testing.mock_data(num_examples=20):
    eval_source = original(config.data, split="eval", global_batch=16, mesh=mesh, seed=0)
    clean = evaluate.encode(model, eval_source.eval_batches())
    result, firsts = robustness.evaluate_corruptions(
        config, model, lambda out: out["repr"][:, :2], ("repr",), eval_source, mesh, clean)
  # Streamed, each read once: never decoded whole into memory, whatever data.in_memory says.
  assert seen == [("cifar10_corrupted/gaussian_noise_1", "test", False),
                  ("cifar10_corrupted/gaussian_noise_3", "test", False),
                  ("cifar10_corrupted/frost_1", "test", False),
                  ("cifar10_corrupted/frost_3", "test", False)]
  assert result["benchmark"] == "CIFAR-10-C" and "alexnet_mce" not in result
  assert set(result["top1"]) == {"gaussian_noise", "frost"}
  assert set(firsts) == {("gaussian_noise", 1), ("gaussian_noise", 3), ("frost", 1),
                         ("frost", 3)}
  assert all(0 <= v <= 100 for row in result["top1"].values() for v in row.values())
