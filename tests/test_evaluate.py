"""Evaluation of a trained model: kNN, top-k, the linear stage, one program for every pass."""

import jax
import ml_collections
import numpy as np
import pytest

from supcon_jax import checkpoint, data, evaluate, linear_probe, methods, sharding, train, trained
from supcon_jax import config as config_lib
from supcon_jax.trained import TrainedModel


def test_knn_votes_by_cosine_similarity():
  # Two classes along the x and y axes; cosine ignores the norms.
  bank = np.array([[1, 0.1], [3, -0.2], [2, 0.0], [0.1, 1], [-0.2, 2], [0, 5]], np.float32)
  bank_y = np.array([0, 0, 0, 1, 1, 1])
  query = np.array([[5, 1], [1, 4], [0.2, 1], [4, 0.5]], np.float32)
  query_y = np.array([0, 1, 0, 0])  # the third is wrong: it lies on the class-1 axis
  acc = evaluate.knn_top1(bank, bank_y, query, query_y, k=3, temperature=0.1, num_classes=2)
  assert acc == 75.0


def _ref_knn(bank, bank_y, query, query_y, *, k, temperature, num_classes):
  """Wu et al.'s weighted kNN from its definition, in float64: the k most cosine-similar
  bank rows vote for their class with weight exp(similarity / temperature)."""
  unit = lambda x: np.asarray(x, np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
  sim = unit(query) @ unit(bank).T
  preds = []
  for s in sim:
    votes = np.zeros(num_classes)
    for j in np.argsort(-s)[:k]:
      votes[bank_y[j]] += np.exp(s[j] / temperature)
    preds.append(np.argmax(votes))
  return 100.0 * np.mean(np.array(preds) == query_y)


def _clusters(n, seed, spread=2.0):
  r = np.random.default_rng(seed)
  labels = r.integers(0, 3, n)
  centres = np.random.default_rng(99).normal(size=(3, 8))
  return (centres[labels] + spread * r.normal(size=(n, 8))).astype(np.float32), labels


def test_knn_takes_the_k_nearest_and_weighs_them_by_temperature():
  bank, bank_y = _clusters(80, 0)
  query, query_y = _clusters(60, 1)
  settings = [(1, 0.1), (9, 0.1), (9, 5.0), (80, 5.0)]
  want = [_ref_knn(bank, bank_y, query, query_y, k=k, temperature=t, num_classes=3)
          for k, t in settings]
  assert len(set(want)) == len(want), want  # each setting changes the answer on these data
  got = [evaluate.knn_top1(bank, bank_y, query, query_y, k=k, temperature=t, num_classes=3)
         for k, t in settings]
  np.testing.assert_allclose(got, want)


class _FeatureModel:
  """A stand-in model whose "images" are its r; its z is noise unrelated to the classes."""

  def outputs(self, images, names):
    noise = np.random.default_rng(int(images[0, 0] * 1e6) % 2**32).normal(size=images.shape)
    return {name: {"repr": images, "proj": noise}[name] for name in names}


class _FeatureSource:
  def __init__(self, feats, labels):
    self.feats, self.labels = feats, labels

  def eval_batches(self, batch_size=None, max_examples=None):
    n = len(self.feats) if max_examples is None else max_examples
    for i in range(0, n, 20):
      yield {"image": self.feats[i:i + 20], "label": self.labels[i:i + 20],
             "mask": np.ones(len(self.feats[i:i + 20]), np.float32)}


def test_knn_accuracy_is_on_r_with_the_configured_sample_k_and_temperature():
  config = config_lib.base_config()
  config.data.num_classes = 3
  config.knn.update(num_train=60, k=15, temperature=1.0)
  bank, bank_y = _clusters(80, 0, spread=0.8)
  query, query_y = _clusters(60, 1, spread=0.8)
  model = _FeatureModel()
  eval_out = {**model.outputs(query, ("repr", "proj")), "label": query_y}
  got = evaluate.knn_accuracy(config, model, _FeatureSource(bank, bank_y), eval_out)
  ref = lambda n, k, t: _ref_knn(bank[:n], bank_y[:n], query, query_y, k=k, temperature=t,
                                 num_classes=3)
  want = ref(60, 15, 1.0)
  assert want > 60.0  # r separates the classes (chance: 33%); z does not
  # The default k (20) or temperature (0.1), or the whole bank, would each answer otherwise.
  assert want not in (ref(60, 20, 1.0), ref(60, 15, 0.1), ref(80, 15, 1.0))
  assert got == pytest.approx(want)


def test_top_k_and_classifier_evaluation():
  logits = np.array([[0.1, 0.5, 0.2, 0.0, 0.3, 0.9], [2.0, 1.0, 0.0, -1.0, -2.0, -3.0]])
  acc = evaluate.top_k(logits, np.array([1, 0]))
  assert acc == {"top1": 50.0, "top5": 100.0}
  named = evaluate.classifier_evaluation({"logits": logits, "label": np.array([1, 0])})
  assert named == {"classifier_top1": 50.0, "classifier_top5": 100.0}


def _colour_classes(n_per_class=32, size=8, seed=0):
  """Four classes, each a flat colour (black, red, green, blue) with noise: separable r."""
  rng = np.random.default_rng(seed)
  colours = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]])
  labels = np.repeat(np.arange(4), n_per_class).astype(np.int32)
  images = colours[labels][:, None, None, :] + rng.integers(0, 50, (len(labels), size, size, 3))
  return images.astype(np.uint8), labels


def _colour_config():
  c = config_lib.base_config()
  c.data.num_classes = 4
  c.data.image_size = 8
  c.model.width = 0.0625
  c.augment.policy = "cropflip"
  c.linear.batch_size = 32
  c.linear.epochs = 10.0
  c.linear.optim.base_lr = 1.0
  c.log_every_steps = 100
  return c


@pytest.mark.parametrize("linear_augment", ["none", "cropflip"])
def test_linear_evaluation_learns_and_leaves_the_encoder_bitwise_alone(tmp_path, linear_augment):
  c = _colour_config()
  c.linear.augment = linear_augment
  mesh = sharding.make_mesh(8)
  images, labels = _colour_classes()
  train_source = data.ArraySource.from_arrays(images, labels, num_classes=4, global_batch=32,
                                              mesh=mesh)
  model = methods.get("supcon").build_model(c, 4)
  params, batch_stats = train.init_model(model, 0, images.shape[1:], mesh)
  encoder = TrainedModel(c, {"params": params, "batch_stats": batch_stats},
                         checkpoint.CheckpointRef(str(tmp_path), 0))
  before = jax.tree.map(np.array, jax.device_get(encoder.variables))
  held = data.ArraySource.from_arrays(*_colour_classes(8, seed=1), num_classes=4,
                                      global_batch=32, mesh=mesh)
  eval_out = evaluate.encode(encoder, held.eval_batches())
  result, _, steps = linear_probe.train_classifier(c, encoder, train_source, eval_out, mesh=mesh,
                                                   workdir=str(tmp_path))
  assert result["linear_top1"] >= 90.0, result  # chance: 25%
  assert steps == 10 * 4  # 10 epochs of 128 images at batch 32
  after = jax.device_get(encoder.variables)
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


def test_cross_entropy_baseline_classifier_learns():
  from supcon_jax import optim
  c = _colour_config()
  c.method = "ce"
  c.optim.update(name="sgd", base_lr=0.5, warmup_epochs=0.0)
  mesh = sharding.make_mesh(8)
  method = methods.get("ce")
  model = method.build_model(c, 4)
  images, labels = _colour_classes()
  source = data.ArraySource.from_arrays(images, labels, num_classes=4, global_batch=32,
                                        mesh=mesh)
  tx, _ = optim.make_optimizer(c.optim, batch_size=32, steps_per_epoch=4, total_steps=40)
  state = train.create_state(*train.init_model(model, 0, images.shape[1:], mesh), tx, mesh)
  step = train.make_step(method.loss_fn(c, model, mesh), tx, mesh)
  stream, rng = source.train_batches(), jax.random.key(0)
  for _ in range(40):
    state, _ = step(state, next(stream), rng)
  encoder = TrainedModel(c, {"params": state.params, "batch_stats": state.batch_stats},
                         checkpoint.CheckpointRef("/x", 40))
  held = data.ArraySource.from_arrays(*_colour_classes(8, seed=1), num_classes=4,
                                      global_batch=32, mesh=mesh)
  out = evaluate.encode(encoder, held.eval_batches(), outputs=("repr", "logits"))
  assert evaluate.classifier_evaluation(out)["classifier_top1"] >= 90.0  # chance: 25%


def test_encode_compiles_the_model_once_for_every_pass(monkeypatch):
  # The robustness stage encodes the evaluation split once per corruption and severity, and
  # the monitor once per evaluation, each time with a new model object of the same config.
  traces = []
  original = trained._model_input

  def counted(config, images):  # runs when the model's program is traced, not when it runs
    traces.append(images.shape)
    return original(config, images)

  monkeypatch.setattr(trained, "_model_input", counted)
  trained._compiled_apply.cache_clear()
  c = _colour_config()
  mesh = sharding.make_mesh(8)
  params, stats = train.init_model(methods.get("supcon").build_model(c, 4), 0, (8, 8, 3),
                                   mesh)
  source = data.ArraySource.from_arrays(*_colour_classes(4), num_classes=4, global_batch=16,
                                        mesh=mesh)
  for step in range(3):
    model = TrainedModel(c, {"params": params, "batch_stats": stats},
                         checkpoint.CheckpointRef("/x", step))
    out = evaluate.encode(model, source.eval_batches())
    assert out["repr"].shape == (16, 32)  # ResNet-18 at width 1/16: 512 / 16
  assert len(traces) == 1, traces


def test_the_online_probe_learns_without_touching_the_encoder():
  from supcon_jax import optim
  c = _colour_config()
  c.optim.update(name="sgd", base_lr=0.5, warmup_epochs=0.0)
  c.eval_every_epochs = 1
  mesh = sharding.make_mesh(8)
  images, labels = _colour_classes()
  source = data.ArraySource.from_arrays(images, labels, num_classes=4, global_batch=32,
                                        mesh=mesh)
  held = data.ArraySource.from_arrays(*_colour_classes(8, seed=1), num_classes=4,
                                      global_batch=32, mesh=mesh)
  tx, _ = optim.make_optimizer(c.optim, batch_size=32, steps_per_epoch=4, total_steps=40)
  method = methods.get("supcon")

  steps_of = {}  # one compiled step per config: a continued run reuses its program

  def run(config, steps, state=None):
    model = method.build_model(config, 4)
    if state is None:
      state = train.create_state(*train.init_model(model, 0, images.shape[1:], mesh), tx, mesh)
    key = config.probe.enabled
    if key not in steps_of:
      steps_of[key] = train.make_step(method.loss_fn(config, model, mesh), tx, mesh)
    step = steps_of[key]
    stream, rng = source.train_batches(int(state.step)), jax.random.key(0)
    for _ in range(steps):
      state, _ = step(state, next(stream), rng)
    return state

  def trained_parts(state):  # everything but the probe
    params = {k: v for k, v in state.params.items() if k != "probe"}
    return jax.device_get((params, state.batch_stats))

  plain = trained_parts(run(c, 2))
  probed = ml_collections.ConfigDict(c.to_dict())
  probed.probe.enabled = True
  # Behind the stop-gradient the probe's cross-entropy reaches no other parameter, and the
  # optimiser treats every parameter on its own (no global norm): bitwise the same encoder.
  # Trained on, the monitor reports the probe's accuracy (chance: 25%) beside kNN's.
  state = run(probed, 2)
  for a, b in zip(jax.tree.leaves(trained_parts(state)), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a, b)
  state = run(probed, 30, state)
  values = evaluate.monitor(probed, method, source, held)(1, state)
  assert set(values) == {"knn_top1", "probe_top1"} and values["probe_top1"] >= 90.0, values
