"""Eight simulated CPU devices for every test, set before JAX initialises its backend.

XLA's CPU backend also compiles without LLVM's optimisations here: the tests' programs are
tiny, so compiling dominates their time, and the optimisation level changes no semantics.
For the same reason every test and every process it starts shares one persistent
compilation cache. Subprocesses inherit all of it (those that want another device count
drop that flag and keep the rest).
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"supcon_jax_tests_{os.getuid()}"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
