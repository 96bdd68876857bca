"""The GPU acceptance script in its CPU mode (TINY=1), and the rendering of performance.md.

The script's logic (install check, data, the reference suite, rendering, the budgeted CIFAR-10
run, what lands in $OUT) runs here on tiny sizes; only the figures need a GPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import render_performance, speed

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # the whole script; past it the test fails (a hang, not a slow machine)
RESERVE_S = 25
# The budgeted CIFAR-10 run must not depend on the machine's speed: the budget's arithmetic
# is tested with a fake clock (test_budget.py); here it need only run. budget.py leaves
# budget - elapsed - compile - reserve for pre-training; a script that ends within TIMEOUT_S
# has spent less than that before planning and compiled in less, so more than TIMEOUT_S is
# left. Its probe timed 10 steps within TIMEOUT_S too, so the 3 epochs it may train (2 steps
# each) take less than 0.6 TIMEOUT_S: the plan is the ceiling, never "less than one epoch".
BUDGET_S = 3 * TIMEOUT_S + RESERVE_S


def _folder(root: Path, classes=10, per_class=5, size=32):
  r = np.random.default_rng(0)
  for c in range(classes):
    (root / f"class{c}").mkdir(parents=True)
    for i in range(per_class):
      Image.fromarray(r.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
          root / f"class{c}" / f"{i}.png")
  return root


@pytest.fixture(scope="module")
def acceptance(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("acceptance")
  out = tmp / "out"
  env = {**os.environ, "TINY": "1", "OUT": str(out), "DATA_DIR": str(_folder(tmp / "train")),
         "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu",
         "TINY_TIME_BUDGET_S": str(BUDGET_S), "TINY_TIME_RESERVE_S": str(RESERVE_S),
         # One CPU device, as on the GPU machine (conftest's other XLA flags are kept).
         "XLA_FLAGS": " ".join(f for f in os.environ["XLA_FLAGS"].split()
                               if "device_count" not in f)}
  result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_acceptance.sh"), "all",
                           "supcon"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return out


def test_speed_json_has_every_reference_row_with_its_figures(acceptance):
  result = json.loads((acceptance / "speed.json").read_text())
  env = result["environment"]
  for key in ("device_kind", "platform", "platform_version", "jax", "jaxlib", "date"):
    assert key in env, key
  rows = result["rows"]
  assert not [r for r in rows if "error" in r], rows
  assert {r["label"] for r in rows} == set(speed.REFERENCE)
  assert len(rows) == len(speed.REFERENCE) + 2  # the 16,384-row loss also with two row blocks
  for r in rows:
    assert r["step_ms"] > 0 and r["compile_s"] > 0 and r["speedup"] > 0, r
    assert "peak_bytes" in r  # None on the CPU, which keeps no such statistic
    assert r["meets_target"] in (True, False, None)
    if r["case"] != "loss":
      assert r["images_per_s"] > 0 and 0 < r["mfu"] < 1, r  # TINY: MFU of a nominal 1 TFLOP/s
      assert r["speedup"] == pytest.approx(r["images_per_s"] / r["reference"]["images_per_s"])
  e2e = [r for r in rows if r["case"] == "e2e"]
  assert len(e2e) == 2 and all(r["ratio_to_step"] > 0 for r in e2e)


def test_performance_doc_is_rendered_from_the_json(acceptance):
  rendered = (acceptance / "performance.md").read_text()
  committed = (ROOT / "docs" / "performance.md").read_text()
  begin, end = render_performance.BEGIN, render_performance.END
  # Outside the markers the rendered doc is the committed one, word for word.
  assert rendered.split(begin)[0] == committed.split(begin)[0]
  assert rendered.split(end)[1] == committed.split(end)[1]
  measured = rendered.split(begin)[1].split(end)[0]
  result = json.loads((acceptance / "speed.json").read_text())
  for r in result["rows"]:
    assert f"| {r['label']} | {r['model']} |" in measured
    assert f"{r['step_ms']:.2f}" in measured
  assert speed.format_environment(result["environment"]) in measured
  # Rendering is a function of the JSON: doing it again changes nothing.
  again = render_performance.render(rendered, result, "speed.json")
  assert again == rendered


def test_cifar10_run_writes_results_metrics_and_curves(acceptance):
  results = json.loads((acceptance / "c10_supcon_results.json").read_text())
  assert results["method"] == "supcon" and results["stage"] == "all"
  assert 0 <= results["linear_top1"] <= results["linear_top5"] <= 100
  budget = json.loads((acceptance / ".c10_supcon" / "budget.json").read_text())
  # The budget passed through the script to the plan; one that cannot run out leaves room
  # for the ceiling of 3 epochs, and the run trained what was planned.
  assert budget["budget_s"] == BUDGET_S and budget["epochs"] >= 1
  assert budget["seconds_left_for_pretraining"] > TIMEOUT_S
  assert results["epochs"] == budget["epochs"] == 3
  rows = [json.loads(line) for line in (acceptance / "c10_supcon_metrics.jsonl").open()]
  assert any("knn_top1" in r for r in rows)
  for picture in ("c10_supcon_curves.png", "c10_supcon_embeddings.png"):
    assert (acceptance / picture).read_bytes()[:4] == b"\x89PNG"


def test_committed_doc_matches_the_committed_json():
  doc = (ROOT / "docs" / "performance.md").read_text()
  measured = ROOT / "docs" / "speed_gpu.json"
  if measured.exists():
    result = json.loads(measured.read_text())
    assert render_performance.render(doc, result, "speed_gpu.json") == doc
  else:
    section = doc.split(render_performance.BEGIN)[1].split(render_performance.END)[0]
    assert "Not measured yet" in section


def test_render_needs_the_markers():
  with pytest.raises(ValueError, match="measured: begin"):
    render_performance.render("# no markers\n", {"environment": {}, "rows": []}, "x.json")
