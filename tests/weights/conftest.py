"""Constants for the weight-reader tests (the decompression fixtures live in tests/conftest.py)."""

MODEL_CASES = ("croco_v1", "croco_v2", "dust3r_linear", "dust3r_dpt", "mast3r")
HF_CASES = ("dust3r_linear", "dust3r_dpt", "mast3r")
