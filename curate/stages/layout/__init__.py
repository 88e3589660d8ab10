"""`curate layout`: a workspace's kept images and captions as a Kohya dataset.

plan.py decides concepts and repeats (the seeds' steps formula, balanced across concepts);
write.py writes `img/N_name/`, `reg/N_class/` and an sd-scripts `dataset.toml`; run.py ties
them to a workspace.
"""

from curate.stages.layout.config import LayoutConfig
from curate.stages.layout.run import LayoutResult, layout

__all__ = ["LayoutConfig", "LayoutResult", "layout"]
