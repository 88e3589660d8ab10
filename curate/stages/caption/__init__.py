"""`curate caption`: a vision-language model writes a sentence caption per image.

config.py holds the options; items.py the per-image work both kinds of target share (prompt,
cache key, checks); workspace.py and folder.py where captions go (Text annotations and
decisions, or caption files beside the images); backends.py opens the model.
"""

from curate.stages.caption.config import CaptionConfig
from curate.stages.caption.result import CaptionResult
from curate.stages.caption.run import caption, show

__all__ = ["CaptionConfig", "CaptionResult", "caption", "show"]
