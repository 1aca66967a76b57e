"""A Dense layer's matrix product, with a backward pass written for XLA:CPU.

What `for_backend()` gives `flax.linen.Dense` as its `dot_general` on CPU (transformer.py's `_dense`, which
transformer_xl.py shares, and lstm.py). The forward product is Dense's own; what differs is the weight gradient dW =
X^T dY, a product over the tokens. Autodiff writes it as one contraction over both leading axes of (B, T, D) and (B,
T, F) tensors, for which XLA:CPU copies an operand into a transposed layout and runs a slow path; over the flattened
(N, D) and (N, F) matrices it runs Eigen's product directly, and that product is fast when its result is the
narrow-by-wide one. Measured on this project's 2-core CPU, one core (2026-12-06, benchmarks/RESULTS.md): dW of a
[2048 x 192] x [2048 x 48] pair took 0.83 ms as a [192 x 48] result, 0.36 ms as the [48 x 192] transpose (kept apart
by an optimization barrier, or XLA folds the transpose back). The gradient is the same sum, added up in another
order: it agrees with autodiff's to float32 rounding, not bitwise.

Shape letters: N tokens (every leading axis of the input, flattened), D input features, F output features.
"""

from __future__ import annotations

import jax
from jax import lax

_OVER_TOKENS = (((0,), (0,)), ((), ()))  # contract the leading (token) axis of both operands


def _forward(x_NxD: jax.Array, w_DxF: jax.Array) -> jax.Array:
    return lax.dot_general(x_NxD, w_DxF, (((x_NxD.ndim - 1,), (0,)), ((), ())))  # flax.linen.Dense's own


@jax.custom_vjp
def _product(x_NxD: jax.Array, w_DxF: jax.Array) -> jax.Array:
    return _forward(x_NxD, w_DxF)


def _product_fwd(x_NxD, w_DxF):
    return _forward(x_NxD, w_DxF), (x_NxD, w_DxF)


def _product_bwd(saved, dy_NxF):
    x_NxD, w_DxF = saved
    D, F = w_DxF.shape
    dx_NxD = lax.dot_general(dy_NxF, w_DxF, (((dy_NxF.ndim - 1,), (1,)), ((), ())))
    x_flat, dy_flat = x_NxD.reshape(-1, D), dy_NxF.reshape(-1, F)
    if D > F:  # make the narrow-by-wide [F x D] product, then transpose the small result
        dw_DxF = lax.optimization_barrier(lax.dot_general(dy_flat, x_flat, _OVER_TOKENS)).T
    else:
        dw_DxF = lax.dot_general(x_flat, dy_flat, _OVER_TOKENS)
    return dx_NxD, dw_DxF


_product.defvjp(_product_fwd, _product_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general` for flax.linen.Dense: its (..., D) x (D, F) product through `_product`; any other call
    (another contraction, an explicit precision or result type) goes to `lax.dot_general` unchanged."""
    if (dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2 or precision is not None
            or preferred_element_type is not None):
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
    return _product(lhs, rhs)


def for_backend():
    """The `dot_general` a Dense layer takes on this backend: `dense_dot_general` on CPU (measured faster there),
    None (flax's own, XLA's autodiff) elsewhere. Called when the model is traced."""
    return dense_dot_general if jax.default_backend() == "cpu" else None
