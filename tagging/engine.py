"""Running a WD14 / SmilingWolf tagger: an onnxruntime session fed by a decoding thread pool.

`Tagger.predict` decodes and preprocesses images in worker threads while the session runs the
previous batch: PIL's decoders and resampling, numpy and onnxruntime all release the GIL, so
threads overlap without pickling arrays between processes. Read-ahead is bounded, so memory
stays flat however many images there are. Results come back in input order, and an image that
cannot be read becomes an error line instead of stopping the run.

CUDA is used when this onnxruntime has it and the CUDA libraries load; otherwise the session
runs on CPU and `provider_note` says why, in one line: never a silent fallback.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curate.errors import CurateError
from curate.paths import first_line
from curate.tagging.model import ModelFiles, TagInfo, read_tags
from curate.tagging.preprocess import preprocess

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
INSTALL_HINT = "pip install 'curate[tag]' (onnxruntime-gpu; onnxruntime works too, CPU only)"
CUDA_DOCS = "https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements"

Result = tuple[int, np.ndarray | None, str | None]
Progress = Callable[[int, int], None]


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise CurateError(f"tagging needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build has (not proof that their libraries load)."""
    return list(_ort().get_available_providers())


def default_providers() -> list[str]:
    return [CUDA, CPU] if CUDA in available_providers() else [CPU]


@functools.cache
def cuda_status() -> tuple[bool, str]:
    """(usable, detail): preload the CUDA libraries, then check the CUDA provider library loads.

    `onnxruntime.preload_dlls()` (ort >= 1.21) finds CUDA/cuDNN in the nvidia-* pip packages
    that torch installs, which are not on the loader path otherwise. Cached: loading is per process.
    """
    ort = _ort()
    preload = "after onnxruntime.preload_dlls()"
    if hasattr(ort, "preload_dlls"):
        chatter = io.StringIO()  # preload_dlls prints each library it misses; we summarise instead
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                ort.preload_dlls()
        except Exception as exc:  # a broken nvidia package must not stop a CPU run
            preload = f"onnxruntime.preload_dlls() failed: {first_line(exc)}"
    else:
        preload = f"onnxruntime {ort.__version__} has no preload_dlls (>= 1.21); system loader path only"
    problem = _load_cuda_provider(Path(ort.__file__).parent / "capi")
    if problem:
        return False, f"{problem}, {preload}"
    return True, f"CUDA provider library loads ({preload})"


def _load_cuda_provider(capi: Path) -> str | None:
    """None if the CUDA provider library and everything it links (cuBLAS, cudart, driver) load."""
    windows = sys.platform == "win32"
    shared = capi / ("onnxruntime_providers_shared.dll" if windows else "libonnxruntime_providers_shared.so")
    cuda = capi / ("onnxruntime_providers_cuda.dll" if windows else "libonnxruntime_providers_cuda.so")
    if not cuda.exists():
        return "this onnxruntime has no CUDA provider library"
    try:
        # onnxruntime loads the shared bridge globally first; the CUDA library resolves symbols from it
        ctypes.CDLL(str(shared), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(cuda))
    except OSError as exc:
        return first_line(exc).removesuffix(": No such file or directory")
    return None


def _missing_library(problem: str) -> bool:
    """True when the loader named a library it could not find (POSIX and Windows wording)."""
    return "cannot open shared object" in problem or "Could not find module" in problem


class Tagger:
    """An onnxruntime session for one tagger model plus the thread pool that feeds it."""

    def __init__(self, model_path: Path | str, *, providers: Sequence[str] | None = None,
                 workers: int | None = None, threads: int | None = None,
                 ort_config: Mapping[str, str] | None = None) -> None:
        """`workers`: decode threads (default min(4, cores)); `threads`: onnxruntime intra-op
        threads (default: its own choice); `ort_config`: onnxruntime session config entries."""
        self.model_path = Path(model_path)
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.session, self.provider_note = _open_session(self.model_path, providers, threads,
                                                         ort_config or {})
        self.providers: list[str] = list(self.session.get_providers())
        self.input_name, self.input_size, self.batch_limit = _input_spec(self.model_path, self.session)
        self.num_tags: int | None = _output_width(self.model_path, self.session)

    @property
    def fixed_batch(self) -> bool:
        """True for v2-style models whose batch axis is a fixed number (1): fed one at a time."""
        return self.batch_limit is not None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities `[N, tags]` for a stacked `[N, S, S, 3]` batch of preprocessed images."""
        try:
            return self._run(batch)
        except Exception as exc:  # onnxruntime's own types: a model that loads but cannot run
            size = self.input_size
            raise CurateError(f"{self.model_path}: onnxruntime cannot run this model on a [N, {size}, "
                              f"{size}, 3] float32 batch ({first_line(exc, 200)}); it is not a WD14 "
                              "tagger, or it is damaged: re-download it") from exc

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self.batch_limit is None:
            return self.session.run(None, {self.input_name: batch})[0]
        outputs = []
        for start in range(0, len(batch), self.batch_limit):
            part = batch[start:start + self.batch_limit]
            short = self.batch_limit - len(part)
            if short:  # a fixed batch wider than 1 must be filled; the padding rows are dropped
                part = np.concatenate([part, np.zeros((short, *part.shape[1:]), part.dtype)])
            outputs.append(self.session.run(None, {self.input_name: part})[0][:len(part) - short])
        return np.concatenate(outputs)

    def load(self, path: Path) -> np.ndarray | str:
        """One image preprocessed for this model, or a one-line error naming the file."""
        try:
            with Image.open(path) as image:
                return preprocess(image, self.input_size)
        except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, struct.error...
            return f"{path}: cannot read image ({first_line(exc)}); re-download or replace it, or remove it"

    def predict(self, paths: Sequence[Path], batch_size: int = 8,
                on_progress: Progress | None = None) -> Iterator[Result]:
        """(index, probabilities, None) or (index, None, error) for each path, in input order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        done, total = 0, len(paths)
        for chunk in self._chunks(paths, self.batch_limit or batch_size):
            for result in self._infer(chunk):
                done += 1
                yield result
                if on_progress:
                    on_progress(done, total)

    def _chunks(self, paths: Sequence[Path], per_run: int) -> Iterator[list[tuple[int, np.ndarray | str]]]:
        """Runs of consecutive decoded items holding `per_run` images (errors stay in place)."""
        chunk: list[tuple[int, np.ndarray | str]] = []
        images = 0
        for index, item in self._decoded(paths, read_ahead=2 * per_run + self.workers):
            chunk.append((index, item))
            images += not isinstance(item, str)
            if images == per_run:
                yield chunk
                chunk, images = [], 0
        if chunk:
            yield chunk

    def _decoded(self, paths: Sequence[Path], read_ahead: int) -> Iterator[tuple[int, np.ndarray | str]]:
        """Each path's preprocessed array or error, in order, at most `read_ahead` in flight."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="curate-tag-decode")
        pending: deque[tuple[int, Future[np.ndarray | str]]] = deque()
        try:
            for index, path in enumerate(paths):
                pending.append((index, pool.submit(self.load, Path(path))))
                if len(pending) >= read_ahead:
                    oldest, future = pending.popleft()
                    yield oldest, future.result()
            for index, future in pending:
                yield index, future.result()
        finally:  # also when the caller stops early: drop queued work, wait for running decodes
            pool.shutdown(wait=True, cancel_futures=True)

    def _infer(self, chunk: list[tuple[int, np.ndarray | str]]) -> list[Result]:
        arrays = [item for _, item in chunk if not isinstance(item, str)]
        probs = iter(self.run(np.stack(arrays))) if arrays else iter(())
        return [(index, None, item) if isinstance(item, str) else (index, next(probs), None)
                for index, item in chunk]


def _open_session(model_path: Path, providers: Sequence[str] | None, threads: int | None,
                  settings: Mapping[str, str]) -> tuple[Any, str | None]:
    """The session and, if CUDA was wanted but is not in use, one line saying why."""
    ort = _ort()
    if not model_path.is_file():
        raise CurateError(f"{model_path}: no such model file")
    wanted = list(providers) if providers is not None else default_providers()
    unknown = [p for p in wanted if p not in ort.get_available_providers()]
    if unknown:
        raise CurateError(f"unknown or unavailable provider {', '.join(unknown)}; this onnxruntime has "
                          f"{', '.join(ort.get_available_providers())}")
    note = None
    if CUDA in wanted:
        usable, detail = cuda_status()
        if not usable and _missing_library(detail):  # ORT would fail the same way, noisily
            wanted = _without_cuda(wanted)
            note = f"CUDA unavailable ({detail}); running on CPU; see {CUDA_DOCS}"
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    for key, value in settings.items():
        options.add_session_config_entry(key, value)
    try:
        session = ort.InferenceSession(str(model_path), options, providers=wanted)
    except Exception as exc:
        if CUDA not in wanted:
            raise _unloadable(model_path, exc) from exc
        note = f"CUDA session failed ({first_line(exc, 200)}); running on CPU"
        try:
            session = ort.InferenceSession(str(model_path), options, providers=_without_cuda(wanted))
        except Exception as cpu_exc:
            raise _unloadable(model_path, cpu_exc) from cpu_exc
    if CUDA in wanted and CUDA not in session.get_providers() and note is None:
        note = f"CUDA could not start ({cuda_status()[1]}); running on CPU"
    return session, note


def _unloadable(model_path: Path, exc: BaseException) -> CurateError:
    return CurateError(f"{model_path}: onnxruntime cannot load this model ({first_line(exc, 200)}); "
                       "re-download it, or upgrade onnxruntime (v3 taggers need >= 1.17)")


def _without_cuda(providers: list[str]) -> list[str]:
    return [p for p in providers if p != CUDA] or [CPU]


def _input_spec(model_path: Path, session: Any) -> tuple[str, int, int | None]:
    """(input name, square size, fixed batch or None) from `session.get_inputs()[0]`."""
    inputs = session.get_inputs()
    if not inputs:
        raise CurateError(f"{model_path}: the model takes no input; a WD14 tagger takes one image batch "
                          "[batch, size, size, 3]: re-download it or use another model")
    spec = inputs[0]
    shape = list(spec.shape)
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise CurateError(f"{model_path}: input {spec.name} has shape {shape}; a WD14 tagger takes "
                          "[batch, size, size, 3] (NHWC, square)")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return spec.name, shape[1], batch


def _output_width(model_path: Path, session: Any) -> int | None:
    """The number of tags the first output gives per image (None: a symbolic size)."""
    outputs = session.get_outputs()
    shape = list(outputs[0].shape or []) if outputs else None
    if shape is None or len(shape) not in (0, 2):  # 0: the model does not declare it
        raise CurateError(f"{model_path}: the model's output has shape {shape or 'none'}; a WD14 tagger "
                          "gives [batch, tags] probabilities: re-download it or use another model")
    return shape[-1] if shape and isinstance(shape[-1], int) else None


def load_tagger(files: ModelFiles, *, providers: Sequence[str] | None = None,
                workers: int | None = None) -> tuple[Tagger, list[TagInfo]]:
    """The Tagger and its tag list, checked against each other."""
    tags = read_tags(files.tags_path)
    tagger = Tagger(files.model_path, providers=providers, workers=workers)
    if tagger.num_tags is not None and tagger.num_tags != len(tags):
        raise CurateError(f"{files.name}: the model has {tagger.num_tags} outputs but {files.tags_path.name} "
                          f"lists {len(tags)} tags; the two files come from different models")
    return tagger, tags


def doctor() -> list[tuple[str, bool, str]]:
    """(check, ok, detail) lines for `curate doctor`: what tagging will run on, and why."""
    try:
        ort = _ort()
    except CurateError as exc:
        return [("onnxruntime", False, str(exc)), _hub_line()]
    lines = [_ort_line(ort.__version__)]
    providers = list(ort.get_available_providers())
    lines.append(("execution providers", True, ", ".join(providers)))
    if CUDA in providers:
        usable, detail = cuda_status()
        fallback = f"{detail}; tagging will run on CPU; see {CUDA_DOCS}"
        lines.append(("CUDA", usable, detail if usable else fallback))
    else:
        lines.append(("CUDA", False, "this onnxruntime is CPU-only; for a GPU: pip install onnxruntime-gpu"))
    lines.append(_hub_line())
    return lines


def _ort_line(version: str) -> tuple[str, bool, str]:
    installed = [name for name in ("onnxruntime", "onnxruntime-gpu") if _version(name)]
    if len(installed) > 1:  # both write the same `onnxruntime` module: whichever came last wins
        return ("onnxruntime", False, f"{version}, but both onnxruntime and onnxruntime-gpu are installed; "
                "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    return ("onnxruntime", True, f"{version} ({installed[0] if installed else 'unknown package'})")


def _hub_line() -> tuple[str, bool, str]:
    version = _version("huggingface_hub")
    if version:
        return ("huggingface_hub", True, f"{version} (models can be named by Hub repo id)")
    return ("huggingface_hub", False, "not installed: pass --model FOLDER, or pip install huggingface_hub")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
