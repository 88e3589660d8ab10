"""The built-in LoRA / iA3 trainer that reads a Kohya-layout dataset (issue 7).

Nothing here is imported by the curation commands: torch and diffusers load only for `curate train`.
"""
