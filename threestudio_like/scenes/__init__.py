"""Scenes built from generated images rather than distilled: DepthFusion's 360-degree RGBD scenes
(:mod:`.depthfusion`)."""
