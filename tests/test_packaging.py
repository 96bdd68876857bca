"""`pip install .` and `pip install -e .`: the wheel holds every module, the recipes, the
console scripts and the pins of requirements.txt; installed, the scripts and recipes work.

Everything is built offline from a copy of the checkout (the build leaves build/ and
*.egg-info behind), with the setuptools of this environment.
"""

import os
import shutil
import site
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"supcon-train": "supcon_jax.main:run", "supcon-embed": "supcon_jax.embed:main",
           "supcon-export": "supcon_jax.export:main", "supcon-convert": "supcon_jax.convert:main"}


def _copy_checkout(dest: str) -> str:
  os.makedirs(dest, exist_ok=True)
  for name in ("pyproject.toml", "requirements.txt", "README.md"):
    shutil.copy(os.path.join(ROOT, name), dest)
  for name in ("supcon_jax", "configs"):
    shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  return dest


def _pip(*args: str, cwd: str | None = None) -> None:
  subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args,
                  "--no-deps", "--no-index", "--no-build-isolation"], check=True, cwd=cwd,
                 timeout=300)


def _venv(path: str) -> str:
  """A bare venv that also sees this environment's packages (the dependencies)."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True, timeout=120)
  python = os.path.join(path, "bin", "python")
  purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(purelib, "dependencies.pth"), "w") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")
  return python


def _modules(root: str, package: str) -> set[str]:
  """Wheel paths of the .py files of the checkout folder `package` (recursively)."""
  found = set()
  for folder, dirs, files in os.walk(os.path.join(root, package)):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    found |= {os.path.relpath(os.path.join(folder, f), root) for f in files if f.endswith(".py")}
  return found


def _requirements() -> list[Requirement]:
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    lines = [line.split("#")[0].strip() for line in f]
  return [Requirement(line) for line in lines if line]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  src = _copy_checkout(str(tmp_path_factory.mktemp("src")))
  dist = str(tmp_path_factory.mktemp("dist"))
  _pip("wheel", "-w", dist, src)
  (name,) = os.listdir(dist)
  return os.path.join(dist, name)


def test_wheel_holds_modules_recipes_scripts_and_pins(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    metadata = z.read(f"{info}/METADATA").decode()
    entry_points = z.read(f"{info}/entry_points.txt").decode()
  # Every module of every subpackage (a new subpackage must be added to pyproject.toml).
  assert _modules(ROOT, "supcon_jax") <= names
  recipes = {f"supcon_jax/configs/{f}" for f in os.listdir(os.path.join(ROOT, "configs"))
             if f.endswith(".py")}
  assert "supcon_jax/configs/digits.py" in recipes and recipes <= names
  for script, target in SCRIPTS.items():
    assert f"{script} = {target}" in entry_points
  pins = [Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
          if line.startswith("Requires-Dist:")]
  assert {str(r) for r in pins} == {str(r) for r in _requirements()}


def test_installed_wheel_runs_its_scripts_and_finds_its_recipes(wheel, tmp_path):
  python = _venv(str(tmp_path / "venv"))
  subprocess.run([python, "-m", "pip", "-q", "--disable-pip-version-check", "install",
                  "--no-deps", "--no-index", wheel], check=True, timeout=300)
  bin_dir = os.path.dirname(python)
  # From elsewhere than the checkout, so that only the installed copy can be imported.
  recipe = subprocess.run([python, "-m", "supcon_jax.recipes", "digits"], cwd=tmp_path,
                          check=True, capture_output=True, text=True).stdout.strip()
  assert recipe.startswith(str(tmp_path / "venv")) and recipe.endswith(
      os.path.join("site-packages", "supcon_jax", "configs", "digits.py"))
  train = subprocess.run([os.path.join(bin_dir, "supcon-train"), f"--config={recipe}",
                          f"--workdir={tmp_path / 'w'}", "--dry_run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, check=False)
  assert train.returncode == 0, train.stderr[-2000:]
  assert "method: supcon,ce" in train.stdout
  missing = str(tmp_path / "none")
  for script, args, error in [
      ("supcon-embed", ["--images", missing], f"image folder '{missing}' does not exist"),
      ("supcon-export", [], f"no such directory: {missing}")]:
    done = subprocess.run([os.path.join(bin_dir, script), "--workdir", missing, "--out",
                           str(tmp_path / "out"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {error}"), done.stderr


def test_editable_install_reads_the_checkout(tmp_path):
  src = _copy_checkout(str(tmp_path / "src"))
  python = _venv(str(tmp_path / "venv"))
  subprocess.run([python, "-m", "pip", "-q", "--disable-pip-version-check", "install",
                  "--no-deps", "--no-index", "--no-build-isolation", "-e", src], check=True,
                 timeout=300)
  found = subprocess.run(
      [python, "-c", "import supcon_jax, supcon_jax.recipes as r; "
                     "print(supcon_jax.__file__); print(r.path('digits'))"],
      cwd=tmp_path, check=True, capture_output=True, text=True).stdout.split()
  assert found == [os.path.join(src, "supcon_jax", "__init__.py"),
                   os.path.join(src, "configs", "digits.py")]
