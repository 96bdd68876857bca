"""The kNN monitor, top-k, and the embedding picture."""

import sys

import numpy as np

from supcon_jax import evaluate


def test_knn_votes_by_cosine_similarity():
  # Two classes along the x and y axes; cosine ignores the norms.
  bank = np.array([[1, 0.1], [3, -0.2], [2, 0.0], [0.1, 1], [-0.2, 2], [0, 5]], np.float32)
  bank_y = np.array([0, 0, 0, 1, 1, 1])
  query = np.array([[5, 1], [1, 4], [0.2, 1], [4, 0.5]], np.float32)
  query_y = np.array([0, 1, 0, 0])  # the third is wrong: it lies on the class-1 axis
  acc = evaluate.knn_top1(bank, bank_y, query, query_y, k=3, temperature=0.1, num_classes=2)
  assert acc == 75.0


def test_top_k_and_classifier_evaluation():
  logits = np.array([[0.1, 0.5, 0.2, 0.0, 0.3, 0.9], [2.0, 1.0, 0.0, -1.0, -2.0, -3.0]])
  acc = evaluate.top_k(logits, np.array([1, 0]))
  assert acc == {"top1": 50.0, "top5": 100.0}
  named = evaluate.classifier_evaluation({"logits": logits, "label": np.array([1, 0])})
  assert named == {"classifier_top1": 50.0, "classifier_top5": 100.0}


def test_embedding_picture_is_a_png(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 20)
  features = rng.normal(size=(60, 8)) + 5 * np.eye(8)[labels]
  path = evaluate.plot_embedding(features, labels, str(tmp_path / "e.png"), title="test")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_pca_where_sklearn_is_missing(monkeypatch):
  monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import now raises ImportError
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 5)) * np.array([10.0, 3.0, 1.0, 0.5, 0.1])
  xy, how = evaluate.embed_2d(x)
  assert how == "PCA"
  cov = np.cov(x - x.mean(0), rowvar=False)
  top2 = np.linalg.eigh(cov)[1][:, ::-1][:, :2]
  expected = (x - x.mean(0)) @ top2
  np.testing.assert_allclose(np.abs(xy), np.abs(expected), rtol=1e-6, atol=1e-6)
