"""`curate bg`: background removal. Each image gets a mask (rembg model or OpenCV GrabCut);
the result is an RGBA PNG whose alpha is that mask (Kohya's `alpha_mask` loss mask) and whose
colour is the subject over the chosen fill, so trainers that drop alpha see the fill.

config.py holds the options, masks.py makes masks (rembg imported lazily, one session for the
batch), render.py composes the output, run.py works on a workspace or a folder with --out.
"""

from curate.stages.background.config import BgConfig
from curate.stages.background.run import BgResult, remove_backgrounds

__all__ = ["BgConfig", "BgResult", "remove_backgrounds"]
