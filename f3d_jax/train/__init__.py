"""Training: losses, data pipelines, the train loop (issue 15)."""
