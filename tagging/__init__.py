"""Tags: normalising tag text, tag categories and (later) ONNX taggers, tag rules and captions.

Importing this package loads nothing heavy; taggers import onnxruntime when they run.
"""

from tagging.normalize import KAOMOJI, normalize_tag, split_namespace

__all__ = ["KAOMOJI", "normalize_tag", "split_namespace"]
