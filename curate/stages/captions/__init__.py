"""Caption work over a whole dataset: false-positive filtering (`curate tags filter`) and bulk
edits (`curate captions ...`), on a workspace's working captions or a folder's caption files.

store.py loads and saves captions for both kinds of target; filter.py and edit.py apply the
pure functions of `curate.tagging.filter` and `curate.tagging.captions` to them.
"""
