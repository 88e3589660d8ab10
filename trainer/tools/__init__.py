"""Tools for network files that already exist: read them (`info`), shrink them (`resize`) and
make one from two checkpoints (`extract`). Each module has one entry point that `curate lora`
calls and tests call directly; the maths is written out in docs/lora-tools.md.
"""
