"""``mm-sbert demo``: generated scenes, the demo's training recipe, its run and its report, in one place."""

from __future__ import annotations

from mm_sbert.demo.color_swatches import color_swatches
from mm_sbert.demo.run_demo import demo_settings, run_demo
from mm_sbert.demo.synthetic_scenes import SyntheticScenes

__all__ = ["SyntheticScenes", "color_swatches", "demo_settings", "run_demo"]
