"""curate: from a pile of scraped images to a training-ready Stable Diffusion dataset.

Importing this package does no work and pulls in nothing heavy: `curate --help` and the
pre-commit hook must start fast. Heavy libraries are imported inside the functions that use them.
"""

__version__ = "0.1.0"
