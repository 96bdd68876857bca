"""The pictures: valid PNG files, and the 2-D embedding's PCA fallback."""

import sys

import numpy as np

from supcon_jax import plotting


def test_embedding_picture_is_a_png(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 20)
  features = rng.normal(size=(60, 8)) + 5 * np.eye(8)[labels]
  path = plotting.embedding(features, labels, str(tmp_path / "e.png"), title="test")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_pca_where_sklearn_is_missing(monkeypatch):
  monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import now raises ImportError
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 5)) * np.array([10.0, 3.0, 1.0, 0.5, 0.1])
  xy, how = plotting.embed_2d(x)
  assert how == "PCA"
  cov = np.cov(x - x.mean(0), rowvar=False)
  top2 = np.linalg.eigh(cov)[1][:, ::-1][:, :2]
  expected = (x - x.mean(0)) @ top2
  np.testing.assert_allclose(np.abs(xy), np.abs(expected), rtol=1e-6, atol=1e-6)
