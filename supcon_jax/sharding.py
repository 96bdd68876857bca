"""The device mesh and the two shardings the trainer uses.

One 1-D mesh axis, `data`, over every device of every host: the batch is split along it and
parameters are replicated. The axis type is `Auto` on purpose: flax linen modules carry no
sharding annotations, so XLA's propagation places the intermediate activations; the loss
is the one place that needs explicit per-device code, and it gets it from `jax.shard_map`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D `data` mesh over all devices (or the first `num_devices`, single-process only)."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices, only {len(devices)} are visible")
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `data`, the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Whole on every device of the mesh."""
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  """The global batch must split evenly over devices (and so over hosts)."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"batch_size={global_batch} is not divisible by the {n} devices of the mesh; "
                     f"choose a multiple of {n}")


def host_batch_size(global_batch: int, mesh: Mesh) -> int:
  """The share of the global batch this process reads."""
  check_batch_size(global_batch, mesh)
  return global_batch // jax.process_count()


def to_global(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each host's share into global arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (parameters, optimiser state) whole on every device of the mesh.

  Every process passes the same values; a leaf already replicated over the mesh is kept.
  """
  sharding = replicated(mesh)

  def put(x):
    # Equal, not merely equivalent: on one device a SingleDeviceSharding is equivalent, but
    # a jitted step that returns NamedSharding would then be traced and compiled twice.
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    # device_put cannot reach other processes' devices; each process fills its own.
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)
