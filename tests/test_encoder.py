"""load_encoder, the embed and export commands, on tiny models trained once for the module.

The reference for every embedding is the project's own evaluation path: the whole TrainState
restored by the trainer's checkpointer and run by `evaluate.encode` (or the model's apply).
A `TrainedModel` of the trainer and one of `load_encoder` are the same type.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from supcon_jax import (
  checkpoint,
  data,
  embed,
  evaluate,
  export,
  methods,
  optim,
  sharding,
  train,
  trained,
)
from supcon_jax.data import folder

METHODS = ("supcon", "ce")  # a contrastive method (with z) and one with a classifier


@pytest.fixture(scope="module")
def tiny_root(tiny_runs):
  """The session's tiny runs (conftest): <root>/<method>, each with checkpoints 2 and 4."""
  return str(tiny_runs[0])


def _reference(workdir: str, step: int):
  """The model of `workdir` at `step`, from its whole train state restored through the
  trainer's own checkpointer (not load_encoder's partial restore)."""
  config = trained.read_config(os.path.join(workdir, "config.json"))
  mesh = sharding.make_mesh()
  method = methods.get(config.method)
  model = method.build_model(config, config.data.num_classes)
  params, stats = train.init_model(model, 0, (config.data.image_size,) * 2 + (3,), mesh)
  tx, _ = optim.make_optimizer(config.optim, batch_size=config.batch_size, steps_per_epoch=1,
                               total_steps=1)
  state = train.create_state(params, stats, tx, mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=9,
                                 meta={})
  _, state = ckpt.restore_latest(checkpoint.abstract(state), step=step)
  ckpt.close()
  return config, model, trained.TrainedModel(
      config, {"params": state.params, "batch_stats": state.batch_stats},
      checkpoint.CheckpointRef(ckpt.directory, int(state.step)))


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """float [N, size, size, C]: what the tf.data pipelines' resize computes (before rounding)."""
  n, _, _, c = images.shape
  return np.asarray(jax.image.resize(jnp.asarray(images, jnp.float32), (n, size, size, c),
                                     method="linear", antialias=True))


@pytest.mark.parametrize("method", METHODS)
def test_embeddings_are_those_of_the_evaluation_path(tiny_root, method):
  workdir = os.path.join(tiny_root, method)
  enc = trained.load_encoder(workdir, step=2)
  config, model, ref = _reference(workdir, 2)
  assert enc.step == 2 and enc.image_size == 8 and enc.config.method == method
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (10, 13, 11, 1), np.uint8)  # another size, one channel
  rgb = np.repeat(grey, 3, axis=-1)
  resized = _resize(rgb, enc.image_size)
  as_uint8 = np.clip(np.round(resized), 0, 255).astype(np.uint8)
  batches = [{"image": jnp.asarray(as_uint8), "label": jnp.zeros(10, jnp.int32),
              "mask": jnp.ones(10, jnp.float32)}]
  outputs = ("repr", "proj") if method == "supcon" else ("repr",)
  expected = evaluate.encode(ref, iter(batches), outputs=outputs)
  # uint8 of another size and 1 channel, in batches of 4 (the last one padded).
  r = enc.embed(grey, batch_size=4)
  assert r.dtype == np.float32 and r.shape == (10, enc.output_dim())
  np.testing.assert_allclose(r, expected["repr"], atol=1e-5)
  # Float images in [0, 1] are resized without rounding and normalised alike.
  normalised = (resized / 255 - np.asarray(config.data.mean)) / np.asarray(config.data.std)
  direct = jax.jit(model.apply, static_argnames="train")(
      ref.variables, jnp.asarray(normalised, jnp.float32), train=False)
  np.testing.assert_allclose(enc.embed(rgb / 255.0), direct["repr"], atol=1e-5)
  # Images already image_size x image_size are taken as they are.
  np.testing.assert_allclose(enc.embed(as_uint8.astype(np.float32) / 255), expected["repr"],
                             atol=1e-5)
  if method == "supcon":
    z = enc.embed(grey, projection=True)
    np.testing.assert_allclose(z, expected["proj"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
  else:
    with pytest.raises(ValueError, match="method ce has no projection head"):
      enc.embed(grey, projection=True)


def test_latest_and_chosen_checkpoint(tiny_root):
  workdir = os.path.join(tiny_root, "supcon")
  images = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), np.uint8)
  latest, second = trained.load_encoder(workdir), trained.load_encoder(workdir, 2)
  assert (latest.step, second.step) == (4, 2)
  assert str(latest.checkpoint) == os.path.join(os.path.abspath(workdir), "checkpoints", "4")
  assert not np.allclose(latest.embed(images), second.embed(images))  # two trained states
  assert trained.load_encoder(workdir, 4).embed(images).tobytes() == \
      latest.embed(images).tobytes()


def test_bad_images_are_refused(tiny_root):
  enc = trained.load_encoder(os.path.join(tiny_root, "supcon"))
  with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
    enc.embed(np.full((2, 8, 8, 3), 255.0))
  with pytest.raises(ValueError, match="C = 1 or 3"):
    enc.embed(np.zeros((2, 8, 8, 2), np.uint8))
  assert enc.embed(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, enc.output_dim())


def test_resize_is_that_of_the_input_pipelines():
  from supcon_jax.data import tfdata  # TensorFlow
  rng = np.random.default_rng(2)
  for h, w, size in [(13, 11, 8), (40, 64, 16), (5, 7, 16)]:
    image = rng.integers(0, 256, (h, w, 3), np.uint8)
    for host_resize, pipeline in ((False, tfdata.resize), (True, tfdata.center_crop)):
      expected = pipeline(tfdata.tf.constant(image), size).numpy().astype(int)
      mine = trained.resize_for_eval(jnp.asarray(image[None], jnp.float32), size,
                                         host_resize)
      diff = np.abs(np.clip(np.round(np.asarray(mine[0])), 0, 255) - expected)
      # Equal but for float rounding at a half level, now and then.
      assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (h, w, size, host_resize)


def test_errors_name_the_problem(tiny_root, tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=f"no such directory: {missing}"):
    trained.load_encoder(missing)
  with pytest.raises(FileNotFoundError, match=f"{tmp_path} is neither a training workdir"):
    trained.load_encoder(str(tmp_path))
  with pytest.raises(ValueError, match="several methods \\(ce, supcon\\)"):
    trained.load_encoder(tiny_root)
  workdir = os.path.join(tiny_root, "supcon")
  with pytest.raises(FileNotFoundError, match=r"no checkpoint 3 in .*checkpoints; it has \[2, 4\]"):
    trained.load_encoder(workdir, step=3)
  empty = tmp_path / "not_started"
  empty.mkdir()
  (empty / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  with pytest.raises(FileNotFoundError, match="no checkpoint in .*not_started/checkpoints"):
    trained.load_encoder(str(empty))


def _image_folder(root, classes: bool) -> list[str]:
  """Digits as PNG (grey) and JPEG (RGB) files of several sizes, in class folders or flat."""
  images, labels = data.load_digits(8, split="eval")
  written = []
  for i in range(24):
    label = int(labels[i])
    directory = root / str(label) if classes else root
    directory.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(images[i]).resize((12 + i % 5, 10 + i % 3))
    if i % 2:
      path = directory / f"{i:02d}.png"
      image.convert("L").save(path)
    else:
      path = directory / f"{i:02d}.jpg"
      image.save(path, quality=95)
    written.append(str(path))
  (root / "notes.txt").write_text("not an image")  # plain files in the root are ignored
  return written


def test_embed_command_with_class_folders(tiny_root, tmp_path, capsys):
  workdir = os.path.join(tiny_root, "supcon")
  _image_folder(tmp_path / "images", classes=True)
  out = tmp_path / "out" / "digits.npz"
  embed.main(["--workdir", workdir, "--images", str(tmp_path / "images"), "--out", str(out),
              "--neighbours", "3", "--batch-size", "10"])
  captured = capsys.readouterr()
  saved = np.load(out)
  paths, labels, classes = embed.list_image_files(str(tmp_path / "images"))
  assert sorted(saved.files) == ["classes", "embeddings", "labels", "paths"]
  assert saved["embeddings"].dtype == np.float32 and saved["embeddings"].shape == (24, 64)
  assert list(saved["paths"]) == paths and list(saved["classes"]) == classes
  np.testing.assert_array_equal(saved["labels"], labels)
  assert [classes[k] for k in saved["labels"]] == [os.path.basename(os.path.dirname(p))
                                                   for p in paths]
  # One path: each file decoded as training decodes folders, then `embed` of its array (its
  # resize included). Only the batches differ (10 files here, one there), which changes
  # nothing but XLA's float32 summation order in the convolutions: ~1e-6 of values of ~1.
  model = trained.load_encoder(workdir)
  one_by_one = np.concatenate([model.embed(np.asarray(folder.decode(p))[None]) for p in paths])
  np.testing.assert_allclose(saved["embeddings"], one_by_one, atol=1e-5)
  neighbours, _ = embed.nearest_neighbours(saved["embeddings"], 3)
  agreement = embed.class_agreement(neighbours, saved["labels"])
  assert f"3-nearest-neighbour class agreement (cosine): {agreement:.4f}" in captured.out
  assert "24/24 images" in captured.err
  picture = tmp_path / "out" / "digits_neighbours.png"
  assert Image.open(picture).format == "PNG"


def test_embed_command_without_class_folders(tiny_root, tmp_path, capsys):
  written = _image_folder(tmp_path / "flat", classes=False)
  (tmp_path / "flat" / "empty_subfolder").mkdir()
  out = tmp_path / "flat.npz"
  embed.main(["--workdir", os.path.join(tiny_root, "supcon"), "--images", str(tmp_path / "flat"),
              "--out", str(out), "--neighbours", "2", "--projection"])
  saved = np.load(out)
  assert sorted(saved.files) == ["embeddings", "paths"]
  assert list(saved["paths"]) == sorted(written) and saved["embeddings"].shape == (24, 128)
  assert "no class folders: no class agreement" in capsys.readouterr().out
  assert (tmp_path / "flat_neighbours.png").exists()


def test_nearest_neighbours_exclude_the_query():
  x = np.asarray([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
  idx, sims = embed.nearest_neighbours(x, 1, chunk=3)  # chunks: the self-mask moves along
  assert idx[:, 0].tolist() == [1, 0, 3, 2]
  assert np.all(sims[:, 0] < 1)
  assert embed.class_agreement(idx, np.asarray([0, 0, 1, 1])) == 1.0
  assert embed.class_agreement(idx, np.asarray([0, 1, 1, 1])) == 0.5


@pytest.mark.parametrize("args, message", [
    (["--images", "{tmp}/none"], "image folder '{tmp}/none' does not exist"),
    (["--images", "{tmp}/empty"], "image folder {tmp}/empty has no images"),
    (["--workdir", "{tmp}/nowhere"], "no such directory: {tmp}/nowhere"),
    (["--workdir", "{tiny_root}"], "holds the runs of several methods"),
    (["--neighbours", "30"], "--neighbours 30 needs 1 <= K < the number of images (24)"),
])
def test_embed_command_user_errors(tiny_root, tmp_path, capsys, args, message):
  _image_folder(tmp_path / "images", classes=True)
  (tmp_path / "empty").mkdir()
  argv = {"--workdir": os.path.join(tiny_root, "supcon"), "--images": str(tmp_path / "images"),
          "--out": str(tmp_path / "x.npz")}
  fill = lambda s: s.format(tmp=tmp_path, tiny_root=tiny_root)
  for flag, value in zip(args[::2], args[1::2]):
    argv[flag] = fill(value)
  with pytest.raises(SystemExit) as exit_info:
    embed.main([item for pair in argv.items() for item in pair])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and fill(message) in err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("method", METHODS)
def test_export_round_trip_is_bitwise(tiny_root, tmp_path, method, capsys):
  workdir = os.path.join(tiny_root, method)
  out = tmp_path / "export"
  export.main(["--workdir", workdir, "--out", str(out), "--step", "2"])
  assert "exported" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["encoder.msgpack", "model_card.json"]
  original, exported = trained.load_encoder(workdir, 2), trained.load_encoder(str(out))
  images = np.random.default_rng(3).integers(0, 256, (5, 9, 12, 1), np.uint8)
  assert exported.embed(images).tobytes() == original.embed(images).tobytes()
  card = json.loads((out / "model_card.json").read_text())
  with open(os.path.join(workdir, "results.json")) as f:
    assert card["results"] == json.load(f)
  assert card["method"] == method and card["step"] == exported.step == 2
  assert card["architecture"]["depth"] == 18 and card["architecture"]["width"] == 0.125
  assert card["feature_dim"] == 64 and card["input"]["image_size"] == 8
  assert card["input"]["mean"] == list(original.config.data.mean)
  assert card["dataset"] == {"source": "arrays", "name": "digits", "num_classes": 10}
  assert card["config"] == original.config.to_dict()
  if method == "supcon":
    assert card["projection"] == {"head": "mlp", "dim": 128}
    assert exported.embed(images, projection=True).tobytes() == \
        original.embed(images, projection=True).tobytes()
  else:
    assert card["projection"] is None
  with pytest.raises(FileNotFoundError, match="export of step 2, not 4"):
    trained.load_encoder(str(out), step=4)
  weights = out / "encoder.msgpack"
  weights.write_bytes(weights.read_bytes()[:-1000])
  with pytest.raises(ValueError, match=f"cannot read {weights}: .*incomplete input"):
    trained.load_encoder(str(out))
  with pytest.raises(ValueError, match="is a training workdir"):
    export.export(workdir, workdir)
  # Another export into a directory that holds files: refused, naming them, unless asked.
  card_bytes = (out / "model_card.json").read_bytes()
  with pytest.raises(SystemExit) as exit_info:
    export.main(["--workdir", workdir, "--out", str(out)])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert f"error: {out} is not empty (it holds encoder.msgpack, model_card.json)" in err
  assert "--overwrite" in err and (out / "model_card.json").read_bytes() == card_bytes
  export.main(["--workdir", workdir, "--out", str(out), "--overwrite"])
  assert json.loads((out / "model_card.json").read_text())["step"] == 4


_WITHOUT_TENSORFLOW = """
import sys

# As if not installed: `import` raises ImportError and importlib.util.find_spec gives None.
for name in ("tensorflow", "tensorflow_datasets", "tensorboard"):
  sys.modules[name] = None
import supcon_jax
assert "jax" not in sys.modules  # load_encoder is imported on first use
from supcon_jax import embed
embed.main(sys.argv[1:])
assert supcon_jax.load_encoder is embed.load_encoder
assert not [m for m, v in sys.modules.items() if m.startswith("tensorflow") and v is not None]
"""


def test_embedding_needs_no_tensorflow(tiny_root, tmp_path):
  _image_folder(tmp_path / "images", classes=True)
  out = tmp_path / "e.npz"
  result = subprocess.run(
      [sys.executable, "-c", _WITHOUT_TENSORFLOW, "--workdir", os.path.join(tiny_root, "ce"),
       "--images", str(tmp_path / "images"), "--out", str(out)],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert np.load(out)["embeddings"].shape == (24, 64)
