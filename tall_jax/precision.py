"""Matrix-product precision of the MultVAE family, chosen by one config field.

``"float32"`` (the faithful default) asks XLA for full-precision float32 products
(``lax.Precision.HIGHEST``): on NVIDIA GPUs JAX would otherwise run float32 matmuls in TF32, which keeps
only 10 mantissa bits of each input. ``"tensorfloat32"`` allows exactly that (GPU only; on a CPU it is
float32). ``"bfloat16"`` rounds both inputs to bfloat16 and accumulates in float32
(``preferred_element_type``): half the bytes and, where the hardware has bf16 units, more FLOP/s.
Parameters, optimizer state and every non-matmul operation stay float32 in all three.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

PRECISIONS = ("float32", "tensorfloat32", "bfloat16")
_LAX = {"float32": jax.lax.Precision.HIGHEST, "tensorfloat32": jax.lax.Precision.DEFAULT,
        "bfloat16": jax.lax.Precision.DEFAULT}


def einsum(spec: str, a: jax.Array, b: jax.Array, precision: str = "float32") -> jax.Array:
    """``jnp.einsum(spec, a, b)`` at ``precision``; a bfloat16 product is returned as float32."""
    if precision == "bfloat16":
        return jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                          preferred_element_type=jnp.float32)
    return jnp.einsum(spec, a, b, precision=_LAX[precision])


def matmul(a: jax.Array, b: jax.Array, precision: str = "float32") -> jax.Array:
    """``a @ b`` for 2-D operands at ``precision``."""
    return einsum("ij,jk->ik", a, b, precision)
