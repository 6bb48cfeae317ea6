"""CroCo, DUSt3R and MASt3R as flax NNX modules with a functional runtime (params dict in, arrays out)."""
