"""`curate tag`: run a WD14 tagger over a workspace or a plain folder and write captions.

config.py holds the options; compose.py turns stored probabilities into caption tags (also used
to re-threshold without the model); workspace.py and folder.py do the two kinds of target.
"""

from curate.stages.tag.config import TagConfig
from curate.stages.tag.run import TagResult, tag

__all__ = ["TagConfig", "TagResult", "tag"]
