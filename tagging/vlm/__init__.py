"""Natural-language captions from vision-language models (library side, no workspace).

`backend` is the protocol every caption backend follows (`Request`, `Result`, `Captioner`);
`local` loads a transformers model from a folder or the Hub (`load_local`) and reports what
works here (`doctor`); `server` asks an OpenAI-compatible server. `prompts` makes what a model
is asked (presets, templates, Florence-2 tasks) and `checks` judges what it answers.
`curate.stages.caption` connects them to workspaces and folders. Nothing here imports torch or
transformers until a model is loaded.
"""

from curate.tagging.vlm.backend import Captioner, Request, Result
from curate.tagging.vlm.local import LocalCaptioner, doctor, load_local

__all__ = ["Captioner", "LocalCaptioner", "Request", "Result", "doctor", "load_local"]
