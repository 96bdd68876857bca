"""TensorFlow, as the package starts it: no oneDNN rewrites, nothing printed, no accelerators."""

import subprocess
import sys

_START = """
import sys
{start}
from tensorflow.python.util import _pywrap_util_port
print("oneDNN", _pywrap_util_port.IsMklEnabled())
print("GPUs", len(tf.config.get_visible_devices("GPU")))
"""


def _run(start: str) -> tuple[str, str]:
  # TF_CPP_MIN_LOG_LEVEL as a user's shell has it (conftest quiets it for the suite).
  env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
  result = subprocess.run([sys.executable, "-c", _START.format(start=start)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
  return result.stdout, result.stderr


def test_tensorflow_starts_without_onednn_and_prints_nothing():
  # A plain `import tensorflow` on an x86 CPU has the rewrites on and says so on stderr
  # ("oneDNN custom operations are on"), which fails both assertions below.
  out, err = _run("from supcon_jax import tf_setup\ntf = tf_setup.tensorflow()")
  assert "oneDNN False" in out and "GPUs 0" in out
  assert "oneDNN" not in err and err.strip() == "", err  # its loading notices went to the log
