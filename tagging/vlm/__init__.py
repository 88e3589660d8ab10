"""Sentence captions from vision-language models: backends (backend.py: the protocol; local
transformers models and OpenAI-compatible servers), prompts (prompts.py) and the checks a
returned caption must pass (checks.py). `curate.stages.caption` connects them to workspaces."""
