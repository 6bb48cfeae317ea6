"""Image input/output: the official DUSt3R image loader (`dust3r.utils.image.load_images`)."""

from f3d_jax.io.images import (
    SUPPORTED_EXTENSIONS,
    ImageLoadError,
    ShapeWarning,
    SkippedImageWarning,
    load_images,
    resize_and_crop,
    resize_long_edge,
)

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "ImageLoadError",
    "ShapeWarning",
    "SkippedImageWarning",
    "load_images",
    "resize_and_crop",
    "resize_long_edge",
]
