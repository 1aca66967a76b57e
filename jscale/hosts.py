"""Multi-host runs: the values every process must agree on, and global arrays fetched to every host.

With one process (every CPU run, a single-GPU run) each function is the identity or a plain device_get.
"""

from __future__ import annotations

import jax
import numpy as np


def agree(value: int) -> int:
    """Process 0's value on every process (multi-host runs must resume from the same step)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def fetch(x) -> np.ndarray:
    """A global array on every host (metrics of members spread over processes included)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
