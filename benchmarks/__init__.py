"""Speed and memory benchmarks of the trainer (tooling outside the `supcon_jax` package)."""
