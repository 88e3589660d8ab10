"""Quality filter (`curate filter`): measure every image once (`score`, numbers only), judge
the numbers against thresholds (`judge`), record a `rejected` decision with every reason.

- `measures`: blur, exposure, colour, JPEG blocks, text; `faces` / `cascade`: face detection
  (OpenCV LBP cascades in numpy, or a YuNet ONNX model), shared with `curate crop`;
- `config.QualityConfig`: thresholds, each chosen by bench/filter_quality.py;
- `run.quality_filter(target, config)`: the entry point, for a workspace or a plain folder.

Names load on first use, so importing the package imports neither numpy nor OpenCV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curate.stages.quality.config import CHECKS, QualityConfig
    from curate.stages.quality.faces import Face, find_faces
    from curate.stages.quality.judge import judge
    from curate.stages.quality.run import QualityResult, quality_filter
    from curate.stages.quality.score import measure_file, measure_image

_MODULE = {
    "CHECKS": "config", "QualityConfig": "config", "Face": "faces", "find_faces": "faces",
    "judge": "judge", "QualityResult": "run", "quality_filter": "run", "measure_file": "score",
    "measure_image": "score",
}
__all__ = ["CHECKS", "Face", "QualityConfig", "QualityResult", "find_faces", "judge", "measure_file",
           "measure_image", "quality_filter"]


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)
