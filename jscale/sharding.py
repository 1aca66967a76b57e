"""The device mesh and every sharding rule, in one place.

Mesh axes:
- ensemble: members of a vmapped group (the leading axis of every stacked array) spread over devices;
- data: data parallelism (the batch axis);
- fsdp: parameter and optimizer-state sharding (ZeRO-3 style) over the model dimension; also splits the batch;
- tensor: tensor parallelism (attention heads and the MLP's hidden units).

Parameters are matched by name (GPT-2's layout: c_attn, c_fc, c_proj, wte, wpe, lm_head), the same rule for the
parameters and for AdamW's moments. A dimension that an axis does not divide stays replicated, so odd shapes
still run. Changing the parallelism is a change of config (`[parallel]`), never of model code.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jscale.config import ConfigError, ParallelConfig

AXES = ("ensemble", "data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch axis is split over both

# Logical layout of each named weight, by (module, parameter): one mesh axis (or None) per array dimension.
RULES: dict[tuple[str, str], tuple] = {
    ("c_attn", "kernel"): ("fsdp", "tensor"),  # (d_model, 3 d_attn): column parallel
    ("c_attn", "bias"): ("tensor",),
    ("c_fc", "kernel"): ("fsdp", "tensor"),  # (d_model, d_ff): column parallel
    ("c_fc", "bias"): ("tensor",),
    ("c_proj", "kernel"): ("tensor", "fsdp"),  # (d_attn or d_ff, d_model): row parallel
    ("wte", "embedding"): ("tensor", "fsdp"),  # (vocab, d_model)
    ("wpe", "embedding"): (None, "fsdp"),
    ("lm_head", "kernel"): ("fsdp", "tensor"),
    ("wi", "kernel"): ("fsdp", "tensor"),  # LSTM input projection (d_in, 4 d_model)
    ("wi", "bias"): ("tensor",),
}


def make_mesh(parallel: ParallelConfig, ensemble: int = 1, devices=None) -> jax.sharding.Mesh:
    """A mesh of shape (ensemble, data, fsdp, tensor); parallel.data = -1 takes the devices left over."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    fixed = ensemble * parallel.fsdp * parallel.tensor
    data = parallel.data if parallel.data != -1 else n // fixed
    if data < 1 or ensemble * data * parallel.fsdp * parallel.tensor != n:
        raise ConfigError(f"parallel: ensemble {ensemble} x data {parallel.data} x fsdp {parallel.fsdp} x tensor "
                          f"{parallel.tensor} does not match the {n} devices")
    shape = (ensemble, data, parallel.fsdp, parallel.tensor)
    types = (jax.sharding.AxisType.Auto,) * len(AXES)
    return jax.make_mesh(shape, AXES, axis_types=types, devices=devices)


def ensemble_mesh(parallel: ParallelConfig, members: int, devices=None) -> jax.sharding.Mesh:
    """For a vmapped group: as many devices on the ensemble axis as divide both the device and member counts,
    the rest data-parallel (fsdp and tensor apply to single large runs only)."""
    n = len(devices if devices is not None else jax.devices())
    ensemble = math.gcd(n, members)
    return make_mesh(ParallelConfig(data=-1, fsdp=1, tensor=1), ensemble=ensemble, devices=devices)


def _fit(spec: tuple, shape: tuple[int, ...], mesh) -> P:
    """Drop mesh axes that do not divide their dimension (or that the mesh has at size 1)."""
    out = []
    for axis, dim in zip(spec, shape):
        names = axis if isinstance(axis, tuple) else (axis,) if axis else ()
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        out.append(axis if names and size > 1 and dim % size == 0 else None)
    return P(*out)


def _leaf_spec(path, leaf, mesh, stacked: bool) -> NamedSharding:
    names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
    rule: tuple = ()
    for (module, param), r in RULES.items():
        if len(names) >= 2 and names[-2] == module and names[-1] == param:
            rule = r
    shape = tuple(getattr(leaf, "shape", ()))
    rule = (("ensemble",) if stacked else ()) + tuple(rule)
    rule = (rule + (None,) * len(shape))[:len(shape)]
    return NamedSharding(mesh, _fit(rule, shape, mesh))


def state_shardings(state, mesh, stacked: bool):
    """NamedShardings for a TrainState (or any pytree of params-like arrays), stacked on a member axis or not."""
    return jax.tree_util.tree_map_with_path(lambda p, x: _leaf_spec(p, x, mesh, stacked), state)


def batch_sharding(mesh, shape: tuple[int, ...], stacked: bool) -> NamedSharding:
    """Batches (B, T+1), or (M, B, T+1) for an ensemble: members over `ensemble`, rows over data x fsdp."""
    spec = ("ensemble", BATCH) if stacked else (BATCH,)
    return NamedSharding(mesh, _fit((spec + (None,) * len(shape))[:len(shape)], shape, mesh))


def steps_sharding(batch_sh: NamedSharding) -> NamedSharding:
    """Several steps' batches (K, ...) for one call of the training program: a batch's sharding, the steps axis
    unsharded in front."""
    return NamedSharding(batch_sh.mesh, P(None, *batch_sh.spec))


def member_sharding(mesh, members: int | None) -> NamedSharding:
    """Per-member vectors (hyperparameters, losses) of an ensemble of `members`; replicated for a single run."""
    if members is None:
        return NamedSharding(mesh, P())
    return NamedSharding(mesh, _fit(("ensemble",), (members,), mesh))


def put(host_array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full (batches are a pure function of
    (seed, step), so each process computes the same one): each process supplies its own devices' slices."""
    return jax.make_array_from_callback(host_array.shape, sharding, lambda idx: host_array[idx])
