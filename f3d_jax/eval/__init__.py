"""Evaluation against ground truth: pose (RRA/RTA/mAA/ATE), focal, depth and point-cloud metrics; synthetic scenes
with known cameras and DUSt3R-like noisy pairwise predictions in `f3d_jax.eval.synthetic`."""

from f3d_jax.eval.metrics import (depth_metrics, focal_metrics, pointcloud_metrics, pose_metrics,
                                  relative_pose_errors, scene_accuracy, sim3_centres, world_points)

__all__ = ["depth_metrics", "focal_metrics", "pointcloud_metrics", "pose_metrics", "relative_pose_errors",
           "scene_accuracy", "sim3_centres", "world_points"]
