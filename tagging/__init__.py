"""Tags: taggers, tag rules and captions. Pure library code over plain data; the workspace and
folder plumbing lives in `curate.stages.tag` and `curate.stages.captions`.

- `model`: find a SmilingWolf-layout tagger (local folder or Hub repo id), read selected_tags.csv
- `preprocess`: image -> the tensor WD14 models expect (white pad, BICUBIC, BGR)
- `engine`: the onnxruntime session (CUDA or CPU, said out loud) with decoding overlapped
- `select`: probabilities -> tags (thresholds, MCut, ratings, replace, undesired)
- `tags`: the ScoredTag / Dataset data model; `normalize`: tag text forms
- `rules/` + `filter`: dataset-level false-positive rules (data in rules/default.toml)
- `captions`: caption text, trigger word and keep_tokens, bulk edits, stats

Importing this package loads nothing heavy; onnxruntime loads only when a tagger runs.
"""

from curate.tagging.normalize import KAOMOJI, normalize_tag, split_namespace
from curate.tagging.tags import Dataset, ScoredTag, tag_key

__all__ = ["KAOMOJI", "Dataset", "ScoredTag", "normalize_tag", "split_namespace", "tag_key"]
