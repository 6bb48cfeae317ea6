"""Pair graphs and pairwise inference (the equivalent of `dust3r.image_pairs` / `dust3r.inference`)."""
