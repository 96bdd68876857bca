"""Every picture the package draws, from plain arrays and numbers, as PNG files.

matplotlib is imported inside each function, as a bare `Figure` (no pyplot: no global backend
switch, notebooks keep theirs), so importing this module costs nothing. A leaf: it imports
only `fileio` of the package.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from supcon_jax import fileio


def embed_2d(x: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, str]:
  """2-D coordinates of the rows of `x`: t-SNE, or PCA where scikit-learn is not installed."""
  try:
    from sklearn.manifold import TSNE
  except ImportError:
    centred = x - x.mean(axis=0)
    return centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T, "PCA"
  return TSNE(n_components=2, init="pca", random_state=seed,
              perplexity=min(30.0, (len(x) - 1) / 3)).fit_transform(x), "t-SNE"


def embedding(features: np.ndarray, labels: np.ndarray, path: str, *, title: str = "",
              max_points: int = 2000, seed: int = 0) -> str | None:
  """A 2-D picture of `features` coloured by class; returns its path.

  None (with a warning) where matplotlib is not installed: a missing picture must not fail
  a finished run.
  """
  try:
    from matplotlib.figure import Figure
  except ImportError:
    logging.warning("matplotlib is not installed: no embedding picture")
    return None
  idx = np.random.default_rng(seed).permutation(len(features))[:max_points]
  x = features[idx] / np.maximum(np.linalg.norm(features[idx], axis=1, keepdims=True), 1e-12)
  xy, how = embed_2d(x, seed=seed)
  fig = Figure(figsize=(5, 5), dpi=120)
  ax = fig.add_subplot()
  sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels[idx], cmap="tab10", s=4)
  ax.legend(*sc.legend_elements(), loc="best", fontsize=6, markerscale=0.6)
  ax.set_title(f"{title or 'r'} ({how})")
  ax.set_xticks([])
  ax.set_yticks([])
  fileio.save_png(fig, path)
  logging.info("embedding picture: %s", path)
  return path


def severity_curves(curves: dict[str, tuple[Sequence[int], float, Sequence[float]]],
                    path: str) -> None:
  """Top-1 against severity, one line per run: {name: (severities, clean top-1, top-1 at
  each severity averaged over the benchmark's corruptions)}; severity 0 is the clean split."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(5, 3.5), dpi=120)
  ax = fig.add_subplot()
  for name, (severities, clean, means) in curves.items():
    ax.plot([0, *severities], [clean, *means], marker="o", label=name)
  ax.set_xlabel("severity (0: clean)")
  ax.set_ylabel("top-1 (%), benchmark corruptions' mean")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fileio.save_png(fig, path)


def corruption_grid(firsts: dict[tuple[str, int], Any], path: str) -> None:
  """One image [1, H, W, C] under every corruption (rows) at every severity (columns):
  {(corruption, severity): image}."""
  from matplotlib.figure import Figure
  names = list(dict.fromkeys(name for name, _ in firsts))
  severities = list(dict.fromkeys(s for _, s in firsts))
  fig = Figure(figsize=(1.1 * len(severities) + 1.5, 1.1 * len(names)), dpi=100)
  for i, name in enumerate(names):
    for j, s in enumerate(severities):
      image = np.asarray(firsts[name, s])[0]
      ax = fig.add_subplot(len(names), len(severities), i * len(severities) + j + 1)
      ax.imshow(image.squeeze(), cmap="gray" if image.shape[-1] == 1 else None,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0:
        ax.set_ylabel(name.replace("_", " "), fontsize=7, rotation=0, ha="right", va="center")
      if i == 0:
        ax.set_title(f"severity {s}", fontsize=7)
  fileio.save_png(fig, path)
  logging.info("corruption grid: %s", path)


def validation_curves(curves: dict[str, dict[str, Any]], path: str) -> None:
  """Validation top-1 against wall time, one line per run, its final top-1 starred:
  {name: {"points": [(seconds, top-1)], "what": "kNN", "final": (seconds, top-1, what)}}."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6, 4), dpi=120)
  ax = fig.add_subplot()
  for name, curve in curves.items():
    line, = ax.plot(*zip(*curve["points"]), marker=".", label=f"{name} ({curve['what']} top-1)")
    seconds, top1, what = curve["final"]
    ax.scatter([seconds], [top1], marker="*", s=80, color=line.get_color(),
               label=f"{name} final {what} top-1")
  ax.set_xlabel("wall time (s)")
  ax.set_ylabel("validation top-1 (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fileio.save_png(fig, path)


def side_by_side(pictures: dict[str, bytes], path: str) -> None:
  """PNG pictures {title: bytes} in one row."""
  import matplotlib.image
  from matplotlib.figure import Figure
  fig = Figure(figsize=(5 * len(pictures), 5), dpi=120)
  for i, (name, png) in enumerate(pictures.items()):
    ax = fig.add_subplot(1, len(pictures), i + 1)
    ax.imshow(matplotlib.image.imread(io.BytesIO(png), format="png"))
    ax.set_axis_off()
    ax.set_title(name)
  fileio.save_png(fig, path)


def neighbours(image: Callable[[int], np.ndarray], neighbour_idx: np.ndarray, sims: np.ndarray,
               names: Sequence[str], labels: np.ndarray | None, path: str,
               *, queries: int = 6) -> str:
  """`queries` images spread over the N of `neighbour_idx` [N, K], each followed by its K
  neighbours, framed green (same label), red (another) or grey (no labels). `image(i)`: the
  picture of image i (a thumbnail), `names[i]` its title."""
  from matplotlib.figure import Figure
  n = len(neighbour_idx)
  rows = np.linspace(0, n - 1, min(queries, n)).round().astype(int)
  cols = neighbour_idx.shape[1] + 1
  fig = Figure(figsize=(1.3 * cols, 1.5 * len(rows)), dpi=100)
  for r, q in enumerate(rows):
    for c, i in enumerate([q, *neighbour_idx[q]]):
      ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
      ax.imshow(image(i))
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        colour, title = "black", f"query: {names[i]}"
      else:
        colour = "grey" if labels is None else ("green" if labels[i] == labels[q] else "red")
        title = f"{names[i]} {sims[q, c - 1]:.2f}"
      ax.set_title(title, fontsize=6)
      for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
  fig.suptitle("nearest neighbours (cosine similarity)", fontsize=8)
  fileio.save_png(fig, path)
  return path
