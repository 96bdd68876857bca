"""The run comparison: table values come from results.json, curves and pictures are PNGs."""

import json

import numpy as np

from supcon_jax import plotting, report, results


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
  plotting.embedding(np.eye(4)[labels] + 0.01 * np.arange(20)[:, None], labels,
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


def test_readme_demo_table_is_what_the_committed_results_make():
  with open(report.README, encoding="utf-8") as f:
    readme = f.read()
  with open(report.DEMO_RESULTS, encoding="utf-8") as f:
    demo = json.load(f)
  assert set(demo) == {"supcon", "ce"}, "docs/results/digits.json: the demo's results.json"
  assert report.render_readme(readme, demo) == readme, (
      "README.md's demo table is not docs/results/digits.json's: run "
      "python -m supcon_jax.report --readme")


def test_readme_command_rewrites_only_the_generated_part(tmp_path, capsys):
  readme = tmp_path / "README.md"
  demo = tmp_path / "digits.json"
  demo.write_text(json.dumps({"supcon": {"method": "supcon", "linear_top1": 98.33,
                                            "linear_top5": 100.0, "knn_top1": 98.05,
                                            "wall_time_s": 131.2, "epochs": 20.0,
                                            "images_per_sec": 443.4}}))
  readme.write_text(f"# Title\n\nBefore.\n\n{report.BEGIN}\n| a typed, stale table |\n"
                    f"{report.END}\n\nAfter.\n")
  report.main(["--readme", str(readme), "--results", str(demo)])
  assert "wrote the demo table" in capsys.readouterr().out
  assert readme.read_text() == (
      f"# Title\n\nBefore.\n\n{report.BEGIN}\n"
      "| method | evaluation | top-1 | top-5 | kNN top-1 | wall time (s) | epochs | images/s |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
      f"| supcon | linear | 98.33 | 100.00 | 98.05 | 131 | 20 | 443 |\n{report.END}\n\nAfter.\n")


def test_robustness_table_averages_each_severity_over_the_corruptions():
  def block(top1, **errors):
    return {"clean_top1": 90.0, "severities": [1, 5], "top1": top1,
            "mean_top1": float(np.mean([v for row in top1.values() for v in row.values()])),
            **errors}
  runs = {
      "ce": {"robustness": block({"fog": {"1": 80.0, "5": 40.0},
                                  "contrast": {"1": 70.0, "5": 20.0}})},
      "supcon": {"robustness": block({"fog": {"1": 84.0, "5": 50.0},
                                      "contrast": {"1": 76.0, "5": 30.0}},
                                     mce=81.3, relative_mce=77.5, baseline="ce")},
      "simclr": {"linear_top1": 50.0},  # not scored: no row
  }
  table = results.robustness_table(runs).splitlines()
  assert table[0] == ("| method | clean top-1 | severity 1 | severity 5 | corrupted top-1 | mCE | "
                      "relative mCE | baseline |")
  assert table[2] == "| ce | 90.00 | 75.00 | 30.00 | 52.50 | – | – | – |"  # no baseline
  assert table[3] == "| supcon | 90.00 | 80.00 | 40.00 | 60.00 | 81.3 | 77.5 | ce |"
  assert len(table) == 4


def test_figures_a_run_does_not_have_are_dashes_not_nan_or_zero():
  # A transfer: a linear stage on another run's encoder trained no encoder here.
  transfer = {"method": "supcon", "stage": "linear", "linear_top1": 81.25, "linear_top5": 99.5,
              "knn_top1": 77.0, "encoder_steps": 4, "linear_time_s": 12.4}
  pretrained = {"method": "simclr", "stage": "pretrain", "epochs": 2.0, "wall_time_s": 30.0,
                "images_per_sec": 1234.0}
  table = results.results_table({"supcon": transfer, "simclr": pretrained}).splitlines()
  assert table[2] == "| supcon | linear | 81.25 | 99.50 | 77.00 | 12 | – | – |"
  assert table[3] == "| simclr | none | – | – | – | 30 | 2 | 1,234 |"


def test_a_run_killed_mid_line_still_reports(tmp_path):
  _fake_run(tmp_path / "a", "supcon", 94.25, 93.5)
  with open(tmp_path / "a" / "metrics.jsonl", "a") as f:
    f.write('{"step": 870, "loss": 4.')  # half a line, as a killed writer leaves it
  finished, rows = report.load_run(str(tmp_path / "a"))
  assert finished["linear_top1"] == 94.25
  assert [r["step"] for r in rows] == [43 * e for e in range(10, 201, 10)]
