"""A reconstruction in the browser (viser): point cloud with a confidence slider, camera frusta with their
images. `serve(dir_or_reconstruction)`; `f3d view DIR` on the command line.

`f3d_jax.viewer.scene` prepares the arrays (numpy only); `f3d_jax.viewer.server` runs the viser server.
viser is imported only when a viewer starts.
"""

from f3d_jax.viewer.scene import ViewerScene, prepare_scene, visible_points
from f3d_jax.viewer.server import RECONSTRUCTION_FILE, Viewer, ViewerError, load_reconstruction, serve

__all__ = ["RECONSTRUCTION_FILE", "Viewer", "ViewerError", "ViewerScene", "load_reconstruction", "prepare_scene",
           "serve", "visible_points"]
