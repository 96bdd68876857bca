"""stage=finetune: the trained encoder and a fresh classifier trained together with labels.

Oracles: the trained encoder's own checkpointed arrays (the start of fine-tuning), its linear
evaluation (what fine-tuning should reach at least), chance, and an uninterrupted run (what a
resumed one must equal bit for bit).
"""

import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from supcon_jax import experiment, finetune, methods, optim, sharding, trained
from tests.helpers import tiny_runs_config


def _config(epochs, **finetune_fields):
  c = tiny_runs_config("supcon")
  c.stage = "finetune"
  c.robustness.enabled = False
  c.finetune.update({"batch_size": 64, "epochs": epochs, **finetune_fields})
  return c


def test_fine_tuning_starts_from_the_trained_encoder_with_a_fresh_classifier(tiny_runs):
  encoder = trained.load_encoder(str(tiny_runs[0] / "supcon"))
  config = finetune.run_config(_config(1.0), encoder.config)
  method = methods.get("ce")
  model = method.build_model(config, 10)
  tx, _ = optim.make_optimizer(config.optim, batch_size=64, steps_per_epoch=10, total_steps=10)
  mesh = sharding.make_mesh()
  fresh = method.initial_state(config, model, tx, (8, 8, 3), mesh)
  state = finetune.from_encoder(fresh, encoder)
  for got, want in ((state.params["encoder"], encoder.variables["params"]["encoder"]),
                    (state.batch_stats["encoder"], encoder.variables["batch_stats"]["encoder"]),
                    (state.params["classifier"], fresh.params["classifier"])):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The trained encoder's arrays differ from a fresh one's: the test above could fail.
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
      jax.tree.leaves(state.params["encoder"]), jax.tree.leaves(fresh.params["encoder"])))
  wide_config = finetune.run_config(_config(1.0), encoder.config)
  wide_config.model.width = 0.25  # an encoder of another width does not fit
  wide = method.build_model(wide_config, 10)
  mismatch = method.initial_state(wide_config, wide, tx, (8, 8, 3), mesh)
  with pytest.raises(ValueError, match="encoder's parameters do not fit"):
    finetune.from_encoder(mismatch, encoder)


def test_fine_tuning_beats_the_linear_evaluation_and_resumes_exactly(tiny_runs, tmp_path):
  linear_top1 = tiny_runs[1]["supcon"]["linear_top1"]
  workdir = tmp_path / "run"
  shutil.copytree(tiny_runs[0] / "supcon", workdir)
  got = experiment.train_and_evaluate(_config(1.0), str(workdir))
  assert got["finetune_steps"] == 22 and got["encoder_steps"] == 4
  assert got["finetune_top1"] > max(linear_top1, 10.0) + 10, (got, linear_top1)
  assert got["linear_top1"] == linear_top1  # the linear evaluation's figure is kept
  assert "finetune_top5" in got and "finetune_knn_top1" in got
  tuned = trained.load_encoder(str(workdir / "finetune"))
  assert tuned.method.name == "ce" and tuned.step == 22

  # Stopped after its checkpoint at step 20 (checkpoint_every_steps=2 keeps 3): the rerun
  # trains steps 21 and 22 again and ends with the same model, bit for bit.
  ckpts = workdir / "finetune" / "checkpoints"
  shutil.rmtree(ckpts / "22")
  again = experiment.train_and_evaluate(_config(1.0), str(workdir))
  assert again["finetune_top1"] == got["finetune_top1"]
  resumed = trained.load_encoder(str(workdir / "finetune"))
  for a, b in zip(jax.tree.leaves(resumed.variables), jax.tree.leaves(tuned.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fine_tuning_transfers_to_other_classes_and_image_sizes(tiny_runs, tmp_path):
  # The digits encoder (8 px, 10 classes) fine-tuned on 3 colour classes at 16 px.
  root = tmp_path / "colours"
  r = np.random.default_rng(0)
  for c, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
    (root / f"c{c}").mkdir(parents=True)
    for i in range(24):
      image = np.clip(np.array(colour) + r.normal(0, 20, (16, 16, 3)), 0, 255)
      Image.fromarray(image.astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
  c = _config(2.0, batch_size=32)  # 60 training images: 1 step per epoch
  c.data.update(source="folder", train_dir=str(root), num_classes=3, image_size=16,
                val_per_class=4, in_memory=True, mean=(0.5, 0.5, 0.5), std=(0.3, 0.3, 0.3))
  c.linear.encoder_workdir = str(tiny_runs[0] / "supcon")
  c.knn.update(num_train=32, k=5)
  # A learning rate too small to move any weight: the run must end where the encoder was.
  c.finetune.optim.update(base_lr=1e-12, weight_decay=0.0)
  got = experiment.train_and_evaluate(c, str(tmp_path / "transfer"))
  assert got["encoder_workdir"] == c.linear.encoder_workdir and got["finetune_steps"] == 2
  tuned = trained.load_encoder(str(tmp_path / "transfer" / "finetune"))
  assert tuned.config.data.num_classes == 3 and tuned.image_size == 16
  # The input normalised as the encoder's weights expect, not as data.mean / data.std say.
  start_config = trained.saved_config(c.linear.encoder_workdir)
  assert tuple(tuned.config.data.mean) == tuple(start_config.data.mean) != c.data.mean
  start = trained.load_encoder(c.linear.encoder_workdir).variables["params"]["encoder"]
  for a, b in zip(jax.tree.leaves(tuned.variables["params"]["encoder"]), jax.tree.leaves(start)):
    # Two steps of lr 1e-12 move a weight by 2e-12 x its (momentum-summed) gradient: below
    # 1e-6 for any gradient under 1e5; a fresh initialisation differs by ~1e-1.
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  c.finetune.batch_size = 128  # more than the 60 training images
  with pytest.raises(ValueError, match="config.finetune.batch_size=128 is more than the 60"):
    experiment.train_and_evaluate(c, str(tmp_path / "too_big"))


def test_fine_tuning_on_a_label_fraction_keeps_its_figures_and_run_apart(tiny_runs, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(tiny_runs[0] / "supcon", workdir)
  c = _config(1.0)
  c.data.label_fraction = 0.1  # 145 of the 1,437 digits: 2 steps of 64
  got = experiment.train_and_evaluate(c, str(workdir))
  block = got["labelled"]["fraction0.1"]
  assert block["labelled_examples"] == 145 and block["finetune_steps"] == 2
  assert "finetune_top1" in block and "finetune_top1" not in got
  assert got["linear_top1"] == tiny_runs[1]["supcon"]["linear_top1"]  # every label's, kept
  tuned = workdir / "finetune_fraction0.1"
  assert (tuned / "label_subset_fraction0.1.txt").read_text().count("\n") == 145
  assert trained.load_encoder(str(tuned)).step == 2 and not (workdir / "finetune").exists()
