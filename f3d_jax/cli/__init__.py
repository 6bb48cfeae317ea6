"""The `f3d` command line (sits on top of everything; nothing in the package imports it)."""
