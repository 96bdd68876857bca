"""The speed benchmark on the CPU: tiny cases run, rows are complete, FLOPs are right."""

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import speed

# The training cost per image (forward + backward) the reference table is based on, GFLOP.
REFERENCE_GFLOP = [((50, "cifar", 32), 7.8), ((18, "cifar", 32), 3.3),
                   ((50, "imagenet", 224), 24.6)]


@pytest.mark.parametrize("arch,gflop", REFERENCE_GFLOP)
def test_flops_match_the_reference_figures(arch, gflop):
  depth, stem, size = arch
  got = speed.train_flops_per_image(speed.Case(depth=depth, stem=stem, image_size=size)) / 1e9
  assert got == pytest.approx(gflop, rel=0.05)


def _write_folder(root, classes=2, per_class=10, size=8):
  r = np.random.default_rng(0)
  for c in range(classes):
    (root / f"class{c}").mkdir(parents=True)
    for i in range(per_class):
      pixels = r.integers(0, 256, (size, size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


def test_e2e_case_gives_step_and_e2e_rows_and_json(tmp_path):
  _write_folder(tmp_path / "train")
  out = tmp_path / "rows.json"
  # float32 and no augmentation only to keep the CPU compile short.
  rows = speed.main(["--case", "e2e", "--data-dir", str(tmp_path / "train"), "--depth", "18",
                     "--width", "0.0625", "--image-size", "8", "--batch", "16",
                     "--num-classes", "2", "--dtype", "float32", "--augment", "none",
                     "--devices", "1", "--warmup", "1", "--windows", "2",
                     "--steps-per-window", "1", "--peak-tflops", "1", "--json", str(out)])
  assert [r["case"] for r in rows] == ["step", "e2e"]
  for r in rows:
    for field in ("images_per_s", "step_ms", "compile_s", "init_s", "mfu", "gflop_per_image",
                  "xla_temp_bytes"):
      assert r[field] > 0, field
    assert r["images_per_step"] == 32 and r["devices"] == 1
    assert r["peak_bytes"] is None or r["peak_bytes"] > 0  # None: the CPU keeps no statistics
    assert r["donated"] is True
    assert r["images_per_s"] == pytest.approx(32 / (r["step_ms"] / 1e3))
  e2e = rows[1]
  assert e2e["dataset_images"] == 20
  assert e2e["ratio_to_step"] == pytest.approx(e2e["images_per_s"] / rows[0]["images_per_s"])
  written = json.loads(out.read_text())
  assert written["environment"]["device_kind"] and written["environment"]["jax"]
  assert [r["case"] for r in written["rows"]] == ["step", "e2e"]
  assert "| e2e | R18x0.0625 cifar 8px supcon |" in speed.format_table(rows)


def test_loss_case(tmp_path):
  rows = speed.run_case(speed.Case(case="loss", rows=256, block_size=64, warmup=1, windows=2,
                                   steps_per_window=2))
  (r,) = rows
  assert r["rows"] == 256 and r["block_size"] == 64
  assert r["step_ms"] > 0 and r["compile_s"] > 0 and r["xla_temp_bytes"] > 0
  assert "supcon loss 256 rows block 64" in speed.format_table(rows)


def test_bad_cases_name_the_flag():
  with pytest.raises(ValueError, match="--rows"):
    speed.run_case(speed.Case(case="loss", rows=255))
  with pytest.raises(ValueError, match="--data-dir"):
    speed.run_case(speed.Case(case="e2e"))
  with pytest.raises(ValueError, match="--windows"):
    speed.run_case(speed.Case(case="step", windows=0))


def test_reference_suite_cases():
  plain = speed.suite_cases("reference")
  assert [c[1] for c in plain] == ["step"] * 3 + ["loss"] * 5
  with_data = speed.suite_cases("reference", "/data/train")
  assert [c[1] for c in with_data[:2]] == ["e2e", "e2e"]
  assert ["--depth", "50", "--stem", "imagenet", "--image-size", "224", "--batch", "128"] == \
      plain[2][2:10]
  assert [c[3] for c in plain[3:]] == ["2048", "8192", "16384", "16384", "16384"]
  assert plain[-1][-4:-2] == ["--block-size", "2048"]
  # Every row of the suite has a reference figure, and every reference figure a row.
  produced = {"step": ["_step"], "e2e": ["_step", "_e2e"], "loss": [""]}
  rows = {c[c.index("--label") + 1] + suffix for c in with_data for suffix in produced[c[1]]}
  assert rows == set(speed.REFERENCE)


def test_rows_are_compared_with_the_reference():
  step = speed.compare_to_reference({"label": "r18_cifar_step", "images_per_s": 96_856.0})
  assert step["speedup"] == pytest.approx(2.0) and step["reference"]["images_per_s"] == 48_428
  loss = speed.compare_to_reference({"label": "loss_16384", "step_ms": 4.315})
  assert loss["speedup"] == pytest.approx(4.0)
  assert "speedup" not in speed.compare_to_reference({"label": "", "step_ms": 1.0})


def test_suite_runs_each_case_in_its_own_process(monkeypatch, tmp_path):
  cases = [["--case", "loss", "--rows", "256"], ["--case", "loss", "--rows", "7"]]
  monkeypatch.setattr(speed, "suite_cases", lambda name, data_dir: cases)
  out = tmp_path / "suite.json"
  rows = speed.main(["--suite", "reference", "--warmup", "0", "--windows", "1", "--json",
                     str(out)])
  assert rows[0]["rows"] == 256 and rows[0]["step_ms"] > 0
  assert rows[1]["error"] == 1  # odd rows: the child exits 1 and the suite goes on
  written = json.loads(out.read_text())
  assert written["environment"]["jax"] and len(written["rows"]) == 2


def test_compile_only_reports_xla_memory_and_chunking_cuts_it(tmp_path):
  common = ["--case", "step", "--compile-only", "--depth", "18", "--width", "0.125",
            "--image-size", "16", "--batch", "64", "--dtype", "float32", "--augment", "none",
            "--devices", "1"]
  whole = speed.main(common + ["--json", str(tmp_path / "whole.json")])[0]
  chunked = speed.main(common + ["--chunk-size", "16"])[0]
  for row in (whole, chunked):
    assert row["case"] == "compile" and row["xla_temp_bytes"] > 0 and row["compile_s"] > 0
    assert "images_per_s" not in row  # nothing ran
  assert chunked["chunk_size"] == 16 and chunked["xla_temp_bytes"] * 2 < whole["xla_temp_bytes"]
  written = json.loads((tmp_path / "whole.json").read_text())
  assert written["rows"][0]["xla_temp_bytes"] == whole["xla_temp_bytes"]
  assert "chunk 16: XLA temp" in speed.format_table([chunked])
  with pytest.raises(ValueError, match="--compile-only"):
    speed.run_case(speed.Case(case="loss", compile_only=True))
  # Multi-crop: four 8-px views hold as many pixels as one 16-px view: more memory, not four
  # times more.
  multi = speed.main(common[:-4] + ["--augment", "cropflip", "--devices", "1",
                                    "--small-views", "4", "--small-size", "8"])[0]
  assert (whole["small_views"], multi["small_views"], multi["small_size"]) == (0, 4, 8)
  assert whole["xla_temp_bytes"] < multi["xla_temp_bytes"] < 4 * whole["xla_temp_bytes"]
  assert "64 x 2 + 4 x 8 px" in speed.format_table([multi])
  assert "64 x 2 |" in speed.format_table([whole])
