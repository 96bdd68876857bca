"""The run comparison: table values come from results.json, curves and pictures are PNGs."""

import json

import numpy as np

from supcon_jax import evaluate, report


def _fake_run(path, method, top1, knn):
  # The keys a results.json had before the evaluations were named: the report renames them.
  path.mkdir()
  (path / "results.json").write_text(json.dumps(
      {"method": method, "linear_eval_top1": top1, "linear_eval_top5": 99.0, "knn_top1": knn,
       "wall_time_s": 580.4, "epochs": 200.0, "images_per_sec": 61234.0}))
  rows = [{"step": 43 * e, "loss": 5.0 - e / 100, "elapsed_s": 2.5 * e, "knn_top1": 50 + e / 5}
          for e in range(10, 201, 10)]
  (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  labels = np.repeat(np.arange(2), 10)
  evaluate.plot_embedding(np.eye(4)[labels] + 0.01 * np.arange(20)[:, None], labels,
                          str(path / "embedding.png"))


def test_report_table_and_pictures(tmp_path, capsys):
  _fake_run(tmp_path / "a", "supcon", 94.25, 93.5)
  _fake_run(tmp_path / "b", "ce", 92.0, 91.0)
  out = tmp_path / "docs" / "cmp"
  report.main(["--run", f"supcon={tmp_path / 'a'}", "--run", f"ce={tmp_path / 'b'}",
               "--out", str(out)])
  printed = capsys.readouterr().out
  assert "| supcon | linear | 94.25 | 99.00 | 93.50 | 580 | 200 | 61,234 |" in printed
  assert "| ce | classifier | 92.00 |" in printed
  for suffix in ("_curves.png", "_embeddings.png"):
    assert (tmp_path / "docs" / f"cmp{suffix}").read_bytes()[:4] == b"\x89PNG"
