"""One image a library cannot process is a decision with a reason, never the end of a run.

Every per-image step of a stage (crop, quality, bg; dedupe's hashing has its own catch-all in
`hash_file`) runs through `per_image_map` or `attempt`: an exception from OpenCV, Pillow,
onnxruntime or numpy on one image becomes `Failed("what failed (ExcType: first line): what to
do")`, which the stage records as that image's `failed` decision and counts as skipped, and the
run goes on. Interrupts (KeyboardInterrupt, SystemExit) still stop the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from curate.executor import LOCAL, Executor
from curate.paths import first_line, printable

A = TypeVar("A")
R = TypeVar("R")
FAILED = "failed"  # the verdict of an image a stage could not process; does not leave it out


@dataclass(frozen=True)
class Failed:
    reason: str  # one line: what failed (ExcType: first line): what to do


def failure_reason(exc: BaseException, what: str, todo: str) -> str:
    """`what (ExcType: first line of its message): todo`, printable."""
    first = first_line(exc)
    detail = type(exc).__name__ if first == type(exc).__name__ else f"{type(exc).__name__}: {first}"
    return printable(f"{what} ({detail}): {todo}")


@dataclass(frozen=True)
class PerImage(Generic[A, R]):
    """fn with its exceptions turned into Failed; picklable for a process pool."""

    fn: Callable[[A], R]
    what: str
    todo: str

    def __call__(self, job: A) -> R | Failed:
        try:
            return self.fn(job)
        except Exception as exc:  # a library's failure on one image is that image's problem
            return Failed(failure_reason(exc, self.what, self.todo))


def attempt(fn: Callable[[A], R], job: A, what: str, todo: str) -> R | Failed:
    """fn(job), or Failed with the reason (for steps that run in this process)."""
    return PerImage(fn, what, todo)(job)


def per_image_map(fn: Callable[[A], R], jobs: Sequence[A], workers: int | None, what: str,
                  todo: str, executor: Executor = LOCAL) -> Iterator[R | Failed]:
    """fn over jobs on all cores (or a Ray cluster), in order; each job's exception becomes
    its Failed."""
    yield from executor.map(PerImage(fn, what, todo), jobs, pool="process", workers=workers,
                            preload=["curate.stages.dedupe.hashing"])
