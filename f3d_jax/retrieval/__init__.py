"""Image retrieval: the image-similarity matrix behind MASt3R-SfM's retrieval scene graph.

`similarity_matrix(model, imgs, retrieval=None)` -> (N, N) float32 symmetric. With `retrieval=None`, the
documented fallback (cosine similarity of mean-pooled, L2-normalised encoder features); with
`retrieval=load_retrieval(checkpoint, codebook)`, MASt3R's ASMK retrieval score. See
`f3d_jax.retrieval.similarity` for when to prefer which.
"""

from f3d_jax.retrieval.codebook import read_codebook
from f3d_jax.retrieval.head import RetrievalModel, default_codebook_path, load_retrieval
from f3d_jax.retrieval.similarity import pooled_descriptors, similarity_matrix

__all__ = ["RetrievalModel", "default_codebook_path", "load_retrieval", "pooled_descriptors", "read_codebook",
           "similarity_matrix"]
