"""Whole training runs: ``check`` over many checkpoints, one row each (Lyu & Li's theorem is about a
run: γ̄ rises and the KKT residual falls as training goes on).

Everything that does not depend on θ happens once: imports, the data (an explicit data set is read
once; checkpoints that name their own data share one read per distinct reference). The step of a
checkpoint is its metadata's ``step`` or ``kktembed.step``, else the last number in its file name,
else its position; rows are sorted by step. Checkpoints run in this process, in local worker
processes (``workers``), or as tasks on a Dask distributed cluster (``scheduler``); a checkpoint that
fails becomes a row with its error and the others go on. Rows are written to ``out`` (CSV, JSON
Lines or Parquet by suffix) as they arrive, so an interrupted run loses at most the rows in
progress, and ``resume`` skips checkpoints whose content (sha256) and options already have a row.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from kktembed.errors import InputError, KktembedError, UsageError

ROW_NUMBERS = (
    "accuracy",
    "q_min",
    "normalized_margin",
    "alignment",
    "relative_stationarity_residual",
    "relative_complementarity_residual",
    "seconds",
)
ROW_COUNTS = ("step", "n_candidates", "n_support")


@dataclass(frozen=True)
class RunRow:
    """One checkpoint of a run: the numbers of its check, or the error that stopped it."""

    checkpoint: str
    sha256: str
    step: int
    step_source: str  # "metadata", "name" or "position"
    options_key: str
    accuracy: float | None = None
    q_min: float | None = None
    normalized_margin: float | None = None
    alignment: float | None = None
    n_candidates: int | None = None
    n_support: int | None = None
    relative_stationarity_residual: float | None = None
    relative_complementarity_residual: float | None = None
    verdict: str | None = None
    seconds: float | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "RunRow":
        """A row read back from CSV, JSON Lines or Parquet (empty strings are missing values)."""
        values = {}
        for f in fields(cls):
            value = record.get(f.name)
            if value == "" or value is None:
                values[f.name] = None
            elif f.name in ROW_NUMBERS:
                values[f.name] = float(value)
            elif f.name in ROW_COUNTS:
                values[f.name] = int(float(value))
            else:
                values[f.name] = str(value)
        return cls(**values)


ROW_FIELDS = tuple(f.name for f in fields(RunRow))


@dataclass(frozen=True)
class CheckRunResult:
    """The rows of a run, sorted by step."""

    rows: tuple[RunRow, ...]
    data: str | None
    n_resumed: int = 0

    @property
    def n_failed(self) -> int:
        return sum(row.failed for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_checkpoints": len(self.rows),
            "n_failed": self.n_failed,
            "n_resumed": self.n_resumed,
            "data": self.data,
            "rows": [row.to_dict() for row in self.rows],
        }


@dataclass(frozen=True)
class DataReference:
    """Data a worker reads itself: a file on a path the workers share, or a named data set."""

    kind: str  # "file" or "named"
    value: str

    def load(self):
        from kktembed.loading import load_data

        return load_data(self.value) if self.kind == "file" else load_data(None, self.value)


@dataclass(frozen=True)
class CheckTask:
    """What a worker needs for one checkpoint: the checkpoint's path (workers must see it: a shared
    file system), the options, and the data, either in the task (tensors given in Python, and
    every task run in this process) or as a DataReference that the worker reads once."""

    checkpoint: str
    sha256: str
    step: int
    step_source: str
    options_key: str
    options: dict[str, Any]
    arch: dict[str, Any]
    data: Any  # kktembed.data.Dataset or DataReference


_worker_data: dict[DataReference, Any] = {}  # each worker process reads each data reference once


def _task_dataset(task: CheckTask):
    if not isinstance(task.data, DataReference):
        return task.data
    if task.data not in _worker_data:
        _worker_data[task.data] = task.data.load()
    return _worker_data[task.data]


def run_check_task(task: CheckTask) -> RunRow:
    """Check one checkpoint; any failure becomes the row's error (the run goes on)."""
    from kktembed.api import check

    base = dict(checkpoint=task.checkpoint, sha256=task.sha256, step=task.step, step_source=task.step_source, options_key=task.options_key)
    started = time.perf_counter()
    try:
        result = check(task.checkpoint, arch=task.arch or None, data=_task_dataset(task), **task.options)
    except KktembedError as exc:
        return RunRow(**base, error=str(exc), seconds=time.perf_counter() - started)
    except Exception as exc:  # a bug must not stop the run; the row says what happened
        return RunRow(**base, error=f"unexpected {type(exc).__name__}: {exc}", seconds=time.perf_counter() - started)
    return RunRow(
        **base,
        accuracy=result.accuracy,
        q_min=result.q_min,
        normalized_margin=result.normalized_margin,
        alignment=result.alignment,
        n_candidates=result.n_candidates,
        n_support=result.n_support,
        relative_stationarity_residual=result.relative_stationarity_residual,
        relative_complementarity_residual=result.relative_complementarity_residual,
        verdict=result.verdict,
        seconds=time.perf_counter() - started,
    )


def expand_checkpoints(sources: list[str | Path], skip: list[Path] = ()) -> list[Path]:
    """Paths, folders and glob patterns → checkpoint paths. A folder that is itself a checkpoint
    (model.safetensors or a shard index) stays one; any other folder contributes its
    ``*.safetensors`` files that are not data files (x, y). ``skip`` (e.g. the --data file) is left out."""
    from kktembed.checkpoint import SHARD_INDEX, SINGLE_FILE, read_safetensors_header

    found: list[Path] = []
    for source in map(str, sources):
        path = Path(source)
        if not path.exists() and glob.has_magic(source):
            matches = sorted(Path(match) for match in glob.glob(source))
            if not matches:
                raise InputError(f"{source}: no checkpoint matches this pattern")
            found += matches
        elif path.is_dir() and not ((path / SINGLE_FILE).is_file() or (path / SHARD_INDEX).is_file()):
            for file in sorted(path.glob("*.safetensors")):
                try:
                    names = set(read_safetensors_header(file)[1])
                except KktembedError:
                    names = set()  # unreadable: kept, so that its row reports the problem
                if not ({"x", "y"} <= names <= {"x", "y", "logits"}):
                    found.append(file)
        else:
            found.append(path)
    skipped = {Path(p).resolve() for p in skip if p is not None}
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    paths = [path for resolved, path in unique.items() if resolved not in skipped]
    if not paths:
        raise InputError("no checkpoints to check", hint="give files, folders or patterns like 'run/ckpt_*.safetensors'")
    return paths


def checkpoint_step(path: Path, position: int) -> tuple[int, str]:
    """(step, where it came from): metadata ``step`` / ``kktembed.step``, else the last number in
    the file name (the folder's name for a checkpoint folder), else the position."""
    from kktembed.checkpoint import STEP_KEY, checkpoint_files, read_safetensors_header

    try:
        metadata = read_safetensors_header(checkpoint_files(path)[0][0])[0]
    except KktembedError:
        metadata = {}
    for key in ("step", STEP_KEY):
        value = metadata.get(key, "")
        if re.fullmatch(r"\d+", value.strip()):
            return int(value), "metadata"
    numbers = re.findall(r"\d+", path.stem if path.is_file() else path.name)
    if numbers:
        return int(numbers[-1]), "name"
    return position, "position"


def options_key(options: dict[str, Any], arch: dict[str, Any], data_identity: str) -> str:
    """A short hash of everything besides θ that a row's numbers depend on."""
    text = json.dumps({"options": options, "arch": arch, "data": data_identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RowWriter:
    """Rows to CSV / JSON Lines (appended and flushed to disk row by row) or Parquet (rewritten
    atomically after every row, so the file is always complete)."""

    def __init__(self, path: Path, rows: list[RunRow]):
        self.path, self.rows = Path(path), list(rows)
        self.kind = output_kind(self.path)
        self._rewrite()

    def add(self, row: RunRow) -> None:
        import os

        self.rows.append(row)
        if self.kind == "parquet":
            self._rewrite()
            return
        with self.path.open("a", newline="") as handle:
            handle.write(_serialise([row], self.kind, header=False))
            handle.flush()
            os.fsync(handle.fileno())

    def _rewrite(self) -> None:
        from kktembed.outputs import atomic_path

        with atomic_path(self.path, suffix=self.path.suffix) as temporary:
            if self.kind == "parquet":
                _write_parquet(temporary, self.rows)
            else:
                temporary.write_text(_serialise(self.rows, self.kind, header=True))


def output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    kinds = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
    if suffix not in kinds:
        raise UsageError(f"--out {path}: unknown format {suffix or '(no suffix)'}", hint="use .csv, .jsonl or .parquet")
    return kinds[suffix]


def _serialise(rows: list[RunRow], kind: str, header: bool) -> str:
    import csv
    import io

    if kind == "jsonl":
        return "".join(json.dumps(row.to_dict()) + "\n" for row in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows([{key: ("" if value is None else value) for key, value in row.to_dict().items()} for row in rows])
    return buffer.getvalue()


def _parquet():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError("Parquet output needs pyarrow", hint="pip install 'kktembed[parquet]', or use .csv / .jsonl") from None
    return pyarrow, pyarrow.parquet


def _write_parquet(path: Path, rows: list[RunRow]) -> None:
    pyarrow, parquet = _parquet()
    types = {name: pyarrow.float64() for name in ROW_NUMBERS} | {name: pyarrow.int64() for name in ROW_COUNTS}
    schema = pyarrow.schema([(name, types.get(name, pyarrow.string())) for name in ROW_FIELDS])
    table = pyarrow.Table.from_pylist([row.to_dict() for row in rows], schema=schema)
    parquet.write_table(table, str(path))


def read_rows(path: Path) -> list[RunRow]:
    """The complete rows of an earlier run's output (a line cut short by an interruption is dropped)."""
    import csv

    kind = output_kind(path)
    if kind == "parquet":
        _, parquet = _parquet()
        try:
            records = parquet.read_table(str(path)).to_pylist()
        except Exception as exc:  # pyarrow raises its own error types
            raise InputError(f"{path}: cannot read it back for --resume ({exc})")
    else:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read it back for --resume ({exc})")
        if kind == "jsonl":
            records = []
            for line in text.splitlines():
                try:
                    records.append(json.loads(line))
                except (ValueError, RecursionError):  # a line cut short, or not ours
                    continue
        else:
            try:
                records = list(csv.DictReader(text.splitlines()))
            except csv.Error as exc:
                raise InputError(f"{path}: cannot read it back for --resume ({exc})")
    rows = []
    for record in records:
        try:
            row = RunRow.from_record(record)
        except (AttributeError, TypeError, ValueError, OverflowError):  # not a row of ours
            continue
        if row.checkpoint and row.sha256 and row.options_key:
            rows.append(row)
    return rows


def check_run(*args, **kwargs) -> "CheckRunResult":
    """``check`` every checkpoint of ``sources`` (``_check_run``), as one command."""
    from kktembed.outputs import command_scope

    with command_scope():
        return _check_run(*args, **kwargs)


def _check_run(
    sources: list[str | Path],
    *,
    arch: Any = None,
    data: Any = None,
    dataset: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    workers: int = 1,
    scheduler: str | None = None,
    on_total: Callable[[int], None] | None = None,
    on_row: Callable[[RunRow], None] | None = None,
    **options: Any,
) -> CheckRunResult:
    """``check`` every checkpoint of ``sources`` (module docstring); ``options`` as for
    ``kktembed.check``. ``on_total(n)`` is called once the work is known, ``on_row(row)`` per row."""
    from kktembed.api import _data, _spec, check_options_from
    from kktembed.checkpoint import source_sha256

    check_options_from(options)
    spec = _spec(arch)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if out is not None:
        output_kind(Path(out))
        if Path(out).exists() and not (resume or force):
            raise UsageError(f"{out} exists", hint="pass --resume to continue that run, or --force to start it again")
    paths = expand_checkpoints(sources, skip=[data] if isinstance(data, (str, Path)) else [])
    done = read_rows(Path(out)) if out is not None and resume and Path(out).exists() else []
    previous = {(row.sha256, row.options_key): row for row in done if not row.failed}  # failed rows are retried
    datasets = _DataCache(_data(data, None, None, None), dataset)
    tasks, kept = [], []
    for position, path in enumerate(paths):
        step, step_source = checkpoint_step(path, position)
        try:
            sha256 = source_sha256(path)
            dataset_object, identity, reference = datasets.for_checkpoint(path)
        except KktembedError as exc:
            kept.append(RunRow(str(path), "", step, step_source, "", error=str(exc)))
            continue
        key = options_key(options, spec.to_dict(), identity)
        if (sha256, key) in previous:
            kept.append(previous[(sha256, key)])
            continue
        in_process = workers == 1 and scheduler is None
        data_for_task = dataset_object if in_process or reference is None else reference
        tasks.append(CheckTask(str(path), sha256, step, step_source, key, options, spec.to_dict(), data_for_task))
    tasks.sort(key=lambda task: (task.step, task.checkpoint))
    writer = RowWriter(Path(out), list(previous.values())) if out is not None else None
    rows = list(kept)
    n_resumed = sum(1 for row in kept if not row.failed)
    if on_total:
        on_total(len(tasks))
    for row in kept:
        if row.failed and writer is not None:
            writer.add(row)
    for row in _execute(tasks, workers, scheduler):
        rows.append(row)
        if writer is not None:
            writer.add(row)
        if on_row:
            on_row(row)
    rows.sort(key=lambda row: (row.step, row.checkpoint))
    return CheckRunResult(tuple(rows), datasets.label, n_resumed)


class _DataCache:
    """One read per distinct data reference: the explicit data set, or each checkpoint's own."""

    def __init__(self, data: Any, dataset: str | None):
        self.data, self.dataset, self.cache, self.labels = data, dataset, {}, set()

    @property
    def label(self) -> str | None:
        return ", ".join(sorted(self.labels)) or None

    def for_checkpoint(self, path: Path) -> tuple[Any, str, DataReference | None]:
        """(Dataset, identity for the options key, reference a worker can read it from, or None
        for data given as tensors) for one checkpoint."""
        from kktembed.checkpoint import DATA_KEY, DATASET_KEY, checkpoint_files, file_sha256, read_safetensors_header
        from kktembed.loading import load_data

        if isinstance(self.data, (str, Path)):
            reference = DataReference("file", str(Path(self.data).resolve()))
        elif self.dataset is not None:
            reference = DataReference("named", self.dataset)
        elif self.data is not None:
            reference = None  # tensors given in Python: they travel with the tasks
        else:
            metadata = read_safetensors_header(checkpoint_files(path)[0][0])[0]
            base = path if path.is_dir() else path.parent
            if DATA_KEY in metadata:
                reference = DataReference("file", str((base / metadata[DATA_KEY]).resolve()))
            elif DATASET_KEY in metadata:
                reference = DataReference("named", metadata[DATASET_KEY])
            else:
                raise UsageError(f"{path}: no training data: the checkpoint names none", hint="pass --data FILE or --dataset NAME[:ARGS]")
        if reference not in self.cache:
            if reference is None:
                dataset = load_data(self.data)
                identity = dataset.source
            else:
                dataset = reference.load()
                identity = file_sha256(reference.value) if reference.kind == "file" else reference.value
            self.cache[reference] = (dataset, identity)
            self.labels.add(dataset.source)
        return (*self.cache[reference], reference)


def _execute(tasks: list[CheckTask], workers: int, scheduler: str | None):
    """Rows as they complete: here, in local worker processes, or on a Dask cluster."""
    if scheduler is not None:
        yield from _execute_on_dask(tasks, scheduler)
    elif workers > 1 and len(tasks) > 1:
        yield from _execute_in_processes(tasks, workers)
    else:
        for task in tasks:
            yield run_check_task(task)


def _worker_setup() -> None:
    """Workers use one intra-op thread each (the processes are the parallelism)."""
    import torch

    torch.set_num_threads(1)


def _execute_in_processes(tasks: list[CheckTask], workers: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # no fork of a process that already runs torch threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_setup) as pool:
        futures = {pool.submit(run_check_task, task): task for task in tasks}
        for future in as_completed(futures):
            yield _row_of(future, futures[future])


def _execute_on_dask(tasks: list[CheckTask], address: str):
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise UsageError("--scheduler needs Dask distributed", hint="pip install 'kktembed[distributed]'") from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {address} ({exc})", hint="start one with `dask scheduler` and workers with `dask worker ADDRESS`")
    with client:
        futures = {client.submit(run_check_task, task, pure=False): task for task in tasks}
        resubmitted: set[str] = set()
        pending = as_completed(futures)
        for future in pending:
            task = futures[future]
            if future.status == "error" and _lost_worker(future) and task.checkpoint not in resubmitted:
                # it may only have shared a worker with a task that killed it: one more try
                resubmitted.add(task.checkpoint)
                retry = client.submit(run_check_task, task, pure=False)
                futures[retry] = task
                pending.add(retry)
                continue
            yield _row_of(future, task)


def _lost_worker(future) -> bool:
    """Whether the future failed because its worker died (Dask's KilledWorker), not in the task."""
    return type(future.exception()).__name__ == "KilledWorker"


def _row_of(future, task: CheckTask) -> RunRow:
    """The future's row, or a row saying why the worker gave none (killed, lost, …)."""
    try:
        return future.result()
    except Exception as exc:
        return RunRow(task.checkpoint, task.sha256, task.step, task.step_source, task.options_key, error=f"worker failed: {type(exc).__name__}: {exc}")
