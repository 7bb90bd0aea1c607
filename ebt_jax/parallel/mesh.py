"""The device mesh of a run: axes (data, fsdp, tensor) from `config.mesh`.

-1 in one axis takes the devices the others leave. Axes are `Auto` (GSPMD propagation
from the shardings of parameters, batches and the constrained activations): the model
is written once and `jax.jit` partitions it.
"""

from __future__ import annotations

import math

import jax
import ml_collections
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from ebt_jax.errors import ConfigError
from ebt_jax.parallel.logical import MESH_AXES


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  sizes = [mesh_config[a] for a in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if not isinstance(size, int) or (size < 1 and size != -1):
      raise ConfigError(f"mesh.{axis}: expected a positive integer or -1, got {size!r}")
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh: expected at most one axis of -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"mesh: the fixed axes ({known} devices) do not divide the "
                        f"{num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh: data x fsdp x tensor = {math.prod(sizes)} must equal the "
                      f"{num_devices} devices ({dict(zip(MESH_AXES, sizes))})")
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The mesh over `devices` (default all). Devices of several TPU slices (multi-slice,
  joined by the data-centre network) split `data` across slices: the data axis's
  gradient all-reduce is the only traffic that crosses the slow network, once a step."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices == 1:
    try:
      return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    except NotImplementedError:
      # jax.make_mesh splits a physical torus axis on v5e only; elsewhere each mesh axis
      # must be a product of whole physical axes (v5p-128, 4x4x4: 1, 4, 16 or 64 chips;
      # v6e-64, 8x8: 1, 8 or 64), so fsdp=32 would fail there. Splitting a physical axis
      # (4 -> 2 x 2) keeps each mesh axis's chips neighbours on the torus.
      grid = _split_physical_axes(mesh_utils.create_device_mesh, shape, devices=devices)
      return Mesh(grid, MESH_AXES, axis_types=axis_types)
  if shape[0] % slices:
    raise ConfigError(f"mesh.data: expected a multiple of the {slices} slices (data "
                      f"parallelism crosses slices), got {shape[0]}")
  ici_shape = (shape[0] // slices, *shape[1:])
  try:
    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, (slices, 1, 1), devices)
  except NotImplementedError:
    grid = _split_physical_axes(mesh_utils.create_hybrid_device_mesh, ici_shape,
                                (slices, 1, 1), devices=devices)
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def _split_physical_axes(create, shape, *args, devices):
  """`create(shape, *args, devices)` allowed to split physical axes, or a one-line error."""
  try:
    return create(shape, *args, devices, allow_split_physical_axes=True)
  except (NotImplementedError, ValueError) as e:
    raise ConfigError(f"mesh: data x fsdp x tensor = {' x '.join(map(str, shape))} per slice "
                      f"cannot be laid over these devices' physical topology "
                      f"({str(e).splitlines()[0]})") from None
