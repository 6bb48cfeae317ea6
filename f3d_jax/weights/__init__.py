"""Checkpoint readers, converters, registry and orbax storage."""
