"""Where a stage's per-image work runs: this machine's pools (`local`) or a Ray cluster (`ray`).

A stage hands its PURE per-image function (inputs: a picklable job, e.g. a path and options;
output: a picklable result) to `Executor.map`, or its model as a `Model` (loaded once per
worker, then run over many items) to `Executor.map_model`, and gets the results back in the
items' order, as they complete. What happens to them (the manifest, stored files) stays in the
caller, the driver: it is the only writer of the workspace and commits in batches as results
stream in, so a killed run resumes where it stopped. Both executors run the same function on
the same inputs, so they give the same results bit for bit.

* `local`: today's pools: threads (`pool="thread"`, for work that releases the GIL: decoding,
  hashing files with sha256), forked processes (`pool="process"`, for numpy/Pillow-heavy work),
  and a model loaded once in this process and fed every item (its own thread pool inside).
* `ray`: Ray Data: `from_items` -> `map_batches` with the function as tasks, or with the model
  as an actor pool (`compute=ActorPoolStrategy(size=N)`, one model load per actor, `num_gpus=1`
  per actor when the cluster has GPUs), results streamed back with `iter_batches` in order.
  Ray is imported when a ray executor is made; the cluster is `address`, else `RAY_ADDRESS`,
  else a local instance. Images must be at a path every worker can read (local disk for a
  one-machine cluster, NFS or another shared mount for several; docs/ray.md).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

from curate.errors import CurateError

A = TypeVar("A")
R = TypeVar("R")
EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'curate[ray]'"
# Below this many items per worker a process pool costs more to start than it saves.
MIN_ITEMS_PER_WORKER = 32
# Items per Ray task: about 4 tasks per CPU, within these bounds. Small tasks pay the per-task
# cost (scheduling, an Arrow block each way) too often: importing 2,000 JPEGs on 2 CPUs took
# 5.4 s in tasks of 16 and 3.8 s in tasks of 64 (local: 4.0 s); at 10,000 images dedupe's
# overhead over local fell from +34% in tasks of 64 to +7% in tasks of 256 (bench/ray_bench.py).
RAY_BATCH, RAY_BATCH_MAX = 16, 256
MAX_BLOCKS = 2000  # blocks of the input list (each several batches beyond 128k items)
_preloaded: list[str] = []  # modules the forkserver imports once (pool_map's callers add theirs)


class Model(Protocol[A, R]):
    """A model stage's per-image step: `load()` runs once per worker (the model load), and
    `run(items)` on what it returns yields one result per item, in order (the caller may
    batch or pipeline inside it)."""

    def load(self) -> Callable[[Sequence[A]], Iterable[R]]: ...


# ---- local pools (moved here from the stages so that both executors share one home) ----

def thread_map(fn: Callable[[A], R], items: Iterable[A], workers: int) -> Iterator[R]:
    """Like Executor.map, but with a bounded window so memory stays flat on huge runs."""
    if workers <= 1:
        yield from map(fn, items)
        return
    window: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers) as pool:
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= workers * 4:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def pool_map(fn: Callable[[A], R], items: Sequence[A], workers: int | None = None,
             preload: Sequence[str] = ()) -> Iterator[R]:
    """fn over items, results in order, on a process pool over all cores (inline when few)."""
    workers = min(workers or os.cpu_count() or 1, max(1, len(items) // MIN_ITEMS_PER_WORKER))
    if workers == 1:
        yield from map(fn, items)
        return
    chunksize = max(1, min(64, len(items) // (workers * 8)))
    # forkserver: forking a process that already runs threads (a progress bar's) can deadlock.
    with _context(preload).Pool(workers) as pool:
        yield from pool.imap(fn, items, chunksize=chunksize)


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    # A process with one thread forks safely, and its workers start with everything it has
    # imported (no second import of numpy, scipy and Pillow: about half a second per run), so
    # the preload is imported here first: once, rather than once in each worker.
    # With another thread alive (a progress bar's), a fork could copy a lock that thread holds;
    # macOS system libraries are not fork-safe at all (Python's own default there is spawn).
    if threading.active_count() == 1 and sys.platform == "linux":
        for name in preload:
            importlib.import_module(name)
        return multiprocessing.get_context("fork")
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Workers fork from a server that has imported these modules once, instead of each
    # importing numpy, Pillow and imagehash again (seconds per pool on a slow disk).
    context.set_forkserver_preload(list(preload) or ["curate.executor"])
    return context


class Executor:
    """The local executor (see the module doc); RayExecutor overrides the two maps."""

    name = "local"
    remote = False  # True: the work runs in other processes, maybe on other machines

    def map(self, fn: Callable[[A], R], items: Sequence[A], *, pool: str = "process",
            workers: int | None = None, preload: Sequence[str] = (),
            setup: Callable[[], None] | None = None) -> Iterator[R]:
        """fn over items, results in items' order as they complete. `pool`: "process" or
        "thread" (local only); `workers`: local pool size (0/None: one per core); `setup`: run
        once in each remote worker process first (locally the caller arranges its own process)."""
        if pool == "thread":
            return thread_map(fn, items, workers or os.cpu_count() or 1)
        return pool_map(fn, items, workers or None, preload)

    def map_model(self, model: Model[A, R], items: Sequence[A], *, actors: int | None = None,
                  batch_size: int = RAY_BATCH) -> Iterator[R]:
        """model's step over items: loaded once here and fed every item (its own pipelining)."""
        if not items:
            return iter(())
        return iter(model.load()(items))

    def gpus(self) -> int:
        """GPUs a model actor gets one of (remote executors; locally the model finds its own)."""
        return 0

    def describe(self) -> str:
        return "local"


class _Box:
    """An opaque cell: Ray Data stores it as a Python object, never as an Arrow list or struct,
    so a job or result comes back exactly as it went in (a tuple stays a tuple)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return _Box, (self.value,)


class _Refused:
    """A CurateError raised on a worker, sent back as a value: Ray Data re-raises a worker's
    exception as its own UserCodeException, losing the type and keeping a long traceback."""

    def __init__(self, message: str) -> None:
        self.message = message


class _Apply(Generic[A, R]):
    """The task function of `map`: the stage's function over one batch of boxed items."""

    def __init__(self, fn: Callable[[A], R], setup: Callable[[], None] | None) -> None:
        self.fn, self.setup = fn, setup

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.setup is not None:
            _once(self.setup)
        out = []
        for box in batch["item"]:
            try:
                out.append(_Box(self.fn(box.value)))
            except CurateError as exc:
                out.append(_Box(_Refused(str(exc))))
        return {"r": out}


_done_setups: set[Any] = set()


def _once(setup: Callable[[], None]) -> None:
    """setup() the first time this worker process sees it (Ray reuses worker processes)."""
    if setup not in _done_setups:
        setup()
        _done_setups.add(setup)


class _Actor:
    """The actor class of `map_model`: loads the model once, then runs it on each batch."""

    def __init__(self, model: Model[Any, Any]) -> None:
        # a refusal (a model that will not load) is answered to each call, not raised here: Ray
        # reports a failed actor start as a died actor, without the exception to pass on
        self.refused: _Refused | None = None
        try:
            self.run = model.load()
        except CurateError as exc:
            self.refused = _Refused(str(exc))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.refused is not None:
            return {"r": [_Box(self.refused) for _ in batch["item"]]}
        jobs = [box.value for box in batch["item"]]
        try:
            out = [_Box(r) for r in self.run(jobs)]
        except CurateError as exc:
            return {"r": [_Box(_Refused(str(exc))) for _ in jobs]}
        if len(out) != len(jobs):
            raise RuntimeError(f"a model step gave {len(out)} results for {len(jobs)} items")
        return {"r": out}


class RayExecutor(Executor):
    """Ray Data over the cluster at `address` (else RAY_ADDRESS, else a local instance)."""

    name = "ray"
    remote = True

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.ray = _import_ray()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": "ERROR", "configure_logging": True}
            if self.address:
                kwargs["address"] = self.address
            elif num_cpus:
                kwargs["num_cpus"] = num_cpus
            try:
                self.ray.init(**kwargs)
            except ConnectionError as exc:
                raise CurateError(f"cannot reach the Ray cluster at {self.address}: {exc}; start it with "
                                  "`ray start --head` (docs/ray.md) or leave --ray-address out") from exc
        for name in ("ray", "ray.data"):  # its per-dataset lines would drown curate's output; a
            logging.getLogger(name).setLevel(logging.CRITICAL)  # failure still raises here

    def _dataset(self, items: Sequence[Any], batch: int) -> Any:
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results in the items' order
        context.enable_progress_bars = False  # curate shows its own progress
        context.print_on_execution_start = False
        blocks = max(1, min(-(-len(items) // batch), MAX_BLOCKS))
        return ray.data.from_items([{"item": _Box(x)} for x in items], override_num_blocks=blocks)

    def task_batch(self, count: int) -> int:
        """Items per task for `count` items: ~4 tasks per CPU of the cluster, 16 to 64."""
        cpus = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        return max(RAY_BATCH, min(RAY_BATCH_MAX, -(-count // (cpus * 4))))

    def _stream(self, dataset: Any) -> Iterator[Any]:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for box in batch["r"]:
                if isinstance(box.value, _Refused):
                    raise CurateError(box.value.message)
                yield box.value

    def map(self, fn: Callable[[A], R], items: Sequence[A], *, pool: str = "process",
            workers: int | None = None, preload: Sequence[str] = (),
            setup: Callable[[], None] | None = None) -> Iterator[R]:
        if not items:
            return iter(())
        batch = self.task_batch(len(items))
        ds = self._dataset(items, batch).map_batches(_Apply(fn, setup), batch_size=batch,
                                                     batch_format="numpy")
        return self._stream(ds)

    def map_model(self, model: Model[A, R], items: Sequence[A], *, actors: int | None = None,
                  batch_size: int = RAY_BATCH) -> Iterator[R]:
        if not items:
            return iter(())
        import ray.data

        gpus = self.gpus()
        size = actors or gpus or self.nodes()
        ds = self._dataset(items, batch_size).map_batches(
            _Actor, fn_constructor_args=(model,), batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size), num_gpus=1 if gpus else 0)
        return self._stream(ds)

    def gpus(self) -> int:
        return int(self.ray.cluster_resources().get("GPU", 0))

    def nodes(self) -> int:
        """Alive nodes: one CPU model actor each by default (a model uses all of its node's cores)."""
        return max(1, sum(1 for n in self.ray.nodes() if n.get("Alive")))

    def describe(self) -> str:
        return f"ray ({self.address or 'local instance'})"


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise CurateError(f"--executor ray needs Ray Data: {RAY_INSTALL}") from None
    return ray


def get_executor(name: str = "local", address: str | None = None) -> Executor:
    """The executor `[run] executor` / `--executor` names ("local" or "ray")."""
    if name == "local":
        return Executor()
    if name == "ray":
        return RayExecutor(address)
    raise CurateError(f"unknown executor {name!r}; executors: {', '.join(EXECUTORS)}")


LOCAL = Executor()
