"""Network building blocks with no model knowledge (flax NNX + jnp)."""
