"""Eight simulated CPU devices for every test, set before JAX initialises its backend.

XLA's CPU backend also compiles without LLVM's optimisations here: the tests' programs are
tiny, so compiling dominates their time, and the optimisation level changes no semantics.
Subprocesses started by the tests inherit both (those that want another device count drop
that flag and keep the rest).
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
