"""The console of `python -m supcon_jax.main`: short lines for people, every record in
`<workdir>/log.txt`, `--verbose` for the full records, and one line for a broken config file.

The runs are real processes on a tiny config (tests/helpers.py's tiny_config: digits at 8x8,
ResNet-18 at width 1/8, two steps per stage) on two simulated devices, sharing the tests'
compilation cache (conftest).
"""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABSL_RECORD = re.compile(r"^[IWEF]\d{4} ", re.M)  # absl's format: I1124 10:56:47.99 ... file.py:52]

CONFIG = '''
from tests.helpers import tiny_config


def get_config(arg=None):
  if arg:
    raise ValueError(f"no variant {arg}")  # a get_config() that fails, for the tests
  c = tiny_config("supcon")
  c.linear.augment = "none"  # on cached features: the rate counts features
  c.probe.enabled = True  # its accuracy in the final table
  return c
'''


def _env():
  kept = [f for f in os.environ["XLA_FLAGS"].split() if "device_count" not in f]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "XLA_FLAGS": " ".join(kept + ["--xla_force_host_platform_device_count=2"])}
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest's: the console must hide TF by itself
  return env


def _main(*args):
  return subprocess.Popen([sys.executable, "-m", "supcon_jax.main", *map(str, args)], cwd=ROOT,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _finish(proc):
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


def test_console_is_short_and_log_txt_holds_every_record(tmp_path):
  config, workdir = tmp_path / "tiny.py", tmp_path / "run"
  config.write_text(CONFIG)
  rc, out, err = _finish(_main(f"--config={config}", f"--workdir={workdir}",
                               "--config.profile_steps=1,2"))
  console = out + err
  assert rc == 0, console
  # The profile of both pre-training steps opens in Perfetto: its trace has them, by name.
  with gzip.open(next((workdir / "profile").rglob("perfetto_trace.json.gz"))) as f:
    events = json.load(f)["traceEvents"]
  steps = {e.get("args", {}).get("step_num") for e in events if e.get("name") == "supcon"}
  assert steps == {"1", "2"}, steps
  assert next((workdir / "profile").rglob("*.xplane.pb")).stat().st_size > 0  # TensorBoard's
  assert not ABSL_RECORD.search(console), console
  assert "oneDNN" not in console and "Traceback" not in console, console
  lines = console.splitlines()
  assert len(lines) <= 30, console
  assert err.startswith("config: ") and "data.image_size=8" in err, console
  for stage, unit in (("supcon", "img"), ("linear", "feat")):
    assert re.search(rf"^\[{stage}\] step 2/2 epoch 0\.1 loss [\d.]+ lr \S+ \d+ {unit}/s "
                     r"\(input wait \d+%\) ETA 0:\d\d$", console, re.M), console
  assert re.search(r"^\| supcon \| linear \| [\d.]+ \|", console, re.M), console
  # With the online probe, its accuracy is a column of the table and a figure of the run.
  assert re.search(r"^\| method \| .* \| kNN top-1 \| online probe top-1 \|", console,
                   re.M), console
  assert 0 <= json.loads((workdir / "results.json").read_text())["probe_top1"] <= 100

  log = (workdir / "log.txt").read_text()
  assert re.search(r"^I\d{4} .* checkpoint_manager\.py:\d+\] ", log, re.M)  # orbax's INFO
  assert re.search(r"^I\d{4} .* train\.py:\d+\] \[supcon\] step 2/2 ", log, re.M)
  assert "oneDNN" in log or "TensorFlow printed" not in log  # TF's notices, where it prints them

  # --verbose: the records on the console too. A rerun of a finished run only evaluates,
  # and appends to log.txt.
  rc, out, err = _finish(_main(f"--config={config}", f"--workdir={workdir}", "--verbose"))
  assert rc == 0, out + err
  assert re.search(r"^I\d{4} .* checkpoint_manager\.py:\d+\] ", err, re.M), err
  assert re.search(r"^I\d{4} .* checkpoint\.py:\d+\] restored checkpoint 2 ", err, re.M), err
  log = (workdir / "log.txt").read_text()
  assert len(re.findall(r"^I\d{4} .* console\.py:\d+\] ---- ", log, re.M)) == 2  # two runs


def test_a_run_refused_at_start_up_writes_no_log(tmp_path):
  config, workdir = tmp_path / "tiny.py", tmp_path / "run"
  config.write_text(CONFIG)
  rc, out, err = _finish(_main(f"--config={config}", f"--workdir={workdir}",
                               "--config.batch_size=63"))  # not divisible by 2 devices
  assert rc == 1 and "Traceback" not in out + err, out + err
  errors = [l for l in (out + err).splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "batch_size=63" in errors[0] and "2 devices" in errors[0], err
  assert not (workdir / "log.txt").exists()


def test_a_broken_config_file_is_one_line_naming_file_and_line(tmp_path):
  syntax = tmp_path / "syntax.py"
  broken = '  c.linear.augment = "none"'
  syntax.write_text(CONFIG.replace(broken, broken + " +"))
  line = CONFIG.splitlines().index(broken + "  # on cached features: the rate counts features") + 1
  raises_line = CONFIG.splitlines().index('    raise ValueError(f"no variant {arg}")  # a '
                                          'get_config() that fails, for the tests') + 1
  raises = tmp_path / "raises.py"
  raises.write_text(CONFIG)
  nested = tmp_path / "nested.py"  # a recipe built on a broken one (config.load_config_file)
  nested.write_text("from supcon_jax import config as config_lib\n\n\ndef get_config():\n"
                    f"  return config_lib.load_config_file({str(syntax)!r})\n")
  cases = [  # (--config, the one line expected)
      (syntax, f"error: {syntax} line {line}: invalid syntax"),
      (nested, f"error: {syntax} line {line}: invalid syntax"),
      (f"{raises}:big", f"error: {raises} line {raises_line}: ValueError: no variant big"),
  ]
  procs = [_main(f"--config={c}", f"--workdir={tmp_path / 'w'}", "--dry_run") for c, _ in cases]
  for proc, (_, expected) in zip(procs, cases):
    rc, out, err = _finish(proc)
    assert rc == 1, out + err
    assert "Traceback" not in err, err
    assert [l for l in err.splitlines() if l] == [expected], err
  assert not (tmp_path / "w").exists()
