"""What kktembed writes, and the promises it keeps about it.

- **Inputs are never overwritten.** Every file a command reads (named on the command line, referred
  to by a checkpoint's metadata, a spec beside a folder, …) is noted while the command runs
  (``reading``); an output that is one of them, by resolved path or by inode (hard links), is
  refused even with --force, both when the outputs are planned and at the moment of writing.
- **Outputs are checked before any work**: an existing output needs --force; an existing path that
  is not a regular file (a folder, a FIFO, a device such as /dev/null) is never replaced; two
  outputs of one command may not be the same file; the parent must be a writable folder and the
  name short enough for the file system.
- **Writes are atomic**: a file is written to ``NAME.kktembed-partial-PID-XXXX`` beside it and
  renamed into place, so readers see the old file or the new one, never half of one. Such
  partial files left by a killed process are visible and are removed by the next write to the
  same target. A set of files (``trace --out DIR``) is written into a partial folder and
  renamed into place as a whole (``atomic_folder``).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kktembed.errors import KktembedError, OutputExistsError, UsageError

PARTIAL = ".kktembed-partial-"
MANIFEST = "kktembed-outputs.json"

_reads: contextvars.ContextVar[set | None] = contextvars.ContextVar("kktembed_reads", default=None)


class OutputError(KktembedError):
    """An output cannot be written where asked (permissions, not a folder, name too long, …)."""


@contextlib.contextmanager
def command_scope() -> Iterator[None]:
    """Note the files read from here on (nested scopes share the outermost one's notes)."""
    if _reads.get() is not None:
        yield
        return
    token = _reads.set(set())
    try:
        yield
    finally:
        _reads.reset(token)


def note_read(path: str | Path) -> None:
    """Record that the current command read ``path`` (called by every reader of files)."""
    reads = _reads.get()
    if reads is not None:
        reads.add(_identity(Path(path)))


def _identity(path: Path) -> tuple:
    """(resolved path, (device, inode) if the file exists): two paths name the same file if either agrees."""
    resolved = path.resolve()
    try:
        info = os.stat(resolved)
        return (str(resolved), (info.st_dev, info.st_ino))
    except OSError:
        return (str(resolved), None)


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def _is_read(path: Path) -> bool:
    identity = _identity(path)
    return any(_same(identity, read) for read in _reads.get() or ())


def guard_output(path: str | Path, force: bool, inputs: list) -> None:
    """Refuse an output before any work: one of ``inputs`` or of the files read so far (even with
    --force), an existing non-regular file, an unwritable or impossible location, or an existing
    file without --force."""
    guard_outputs([path], force, inputs)


def _input_identities(inputs: list) -> list[tuple]:
    """Identities of the given inputs and of every file they refer to (a checkpoint's shards, index,
    spec and the data file its metadata names), known before any of them is loaded."""
    from kktembed.checkpoint import referenced_files

    paths = [Path(p) for p in inputs if isinstance(p, (str, os.PathLike))]
    return [_identity(path) for path in paths + [file for path in paths for file in referenced_files(path)]]


def guard_outputs(paths: list, force: bool, inputs: list, resumed: list = ()) -> None:
    """``guard_output`` for every output of one command, and no two of them the same file.
    ``resumed`` outputs are continued, not replaced: they may exist without --force."""
    identities = []
    input_identities = _input_identities(inputs)
    for path in map(Path, paths):
        identity = _identity(path)
        if any(_same(identity, other) for other in input_identities) or _is_read(path):
            raise UsageError(f"{path} is an input of this command; refusing to overwrite it", hint="choose another output file")
        if any(_same(identity, other) for other in identities):
            raise UsageError(f"{path} is given as two outputs of this command", hint="give each output its own file")
        identities.append(identity)
        _check_location(path)
        if path.exists() and not force and path not in map(Path, resumed):
            raise OutputExistsError(f"{path} exists", hint="pass --force to overwrite it")


def _check_location(path: Path, folder: bool = False) -> None:
    """The target is missing or a regular file (with ``folder``: a folder); the folder it goes into
    exists (or can be made) and is writable; its name leaves room for the partial file's suffix."""
    try:
        _check_location_of(path, folder)
    except OSError as exc:  # a component too long, a loop, …: whatever the file system says
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_location_of(path: Path, folder: bool) -> None:
    existing = path.parent
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is not a folder")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    if folder and info is not None and not os.path.isdir(path):
        raise OutputError(f"{path} exists and is not a folder", hint="give --out a folder path")
    if not folder and info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise OutputError(f"{path} is {kind}; refusing to replace it", hint="give the path of a file to write")
    if not folder and info is not None and stat.S_ISLNK(info.st_mode) and os.path.exists(path) and not os.path.isfile(path):
        raise OutputError(f"{path} links to something that is not a regular file; refusing to replace it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: the folder {existing} is not writable", hint="choose another output location")
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    allowed = name_max - len(PARTIAL) - 24  # room for the partial file's suffix
    if len(path.name.encode()) > allowed:
        raise OutputError(f"cannot write {path}: the file name is too long for this file system (at most {allowed} bytes here)")


def _os_error(path: Path, exc: OSError) -> OutputError:
    reason = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only"}.get(exc.errno, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {reason}")


def _remove_stale_partials(path: Path) -> None:
    """Partial files of this target left by processes that no longer run (kill -9)."""
    for partial in path.parent.glob(f"{path.name}{PARTIAL}*"):
        pid = partial.name[len(path.name) + len(PARTIAL):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            else:
                partial.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a partial file beside ``path``; when the block succeeds, rename it onto ``path`` (with
    the umask's permissions). Refuses to replace a file this command read or a non-regular file."""
    path = Path(path)
    _check_location(path)
    if _is_read(path):
        raise UsageError(f"{path} is an input of this command; refusing to overwrite it", hint="choose another output file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(path)
        handle, temporary = tempfile.mkstemp(prefix=f"{path.name}{PARTIAL}{os.getpid()}-", suffix=suffix, dir=path.parent)
        os.close(handle)
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    finally:
        Path(temporary).unlink(missing_ok=True)


def guard_folder(folder: str | Path, force: bool, inputs: list) -> None:
    """An output folder that ``atomic_folder`` may create or replace: missing or empty, or (with
    --force) holding only files a previous kktembed run listed in its manifest, and no input."""
    import json

    folder = Path(folder)
    _check_location(folder, folder=True)
    if not folder.exists():
        return
    contents = sorted(entry.name for entry in folder.iterdir())
    input_identities = _input_identities(inputs)
    for entry in folder.iterdir():
        identity = _identity(entry)
        if any(_same(identity, other) for other in input_identities) or _is_read(entry):
            raise UsageError(f"{entry} is an input of this command and lies in the output folder {folder}", hint="write the outputs to another folder")
    if not contents:
        return
    try:
        listed = set(json.loads((folder / MANIFEST).read_text())["files"]) | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # not our manifest: every file is foreign
        listed = set()
    foreign = [name for name in contents if name not in listed]
    if foreign:
        raise OutputError(f"{folder} holds files kktembed did not write ({', '.join(foreign[:4])}{' …' if len(foreign) > 4 else ''})", hint="choose a new or empty folder")
    if not force:
        raise OutputExistsError(f"{folder} holds the outputs of an earlier run", hint="pass --force to replace them")


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a partial folder beside ``folder``; when the block succeeds, write a manifest and put
    the partial folder in ``folder``'s place in one rename (an earlier output folder is moved
    aside first and removed after), so that the set appears all at once or not at all."""
    import json

    folder = Path(folder)
    _refuse_replacing_inputs(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(folder)
        partial = Path(tempfile.mkdtemp(prefix=f"{folder.name}{PARTIAL}{os.getpid()}-", dir=folder.parent))
    except OSError as exc:
        raise _os_error(folder, exc) from None
    try:
        yield partial
        files = sorted(entry.name for entry in partial.iterdir())
        (partial / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
        os.chmod(partial, 0o777 & ~_umask())
        old = None
        _refuse_replacing_inputs(folder)
        if folder.exists() and any(folder.iterdir()):
            old = folder.with_name(f"{folder.name}{PARTIAL}{os.getpid()}-old")
            os.replace(folder, old)
        os.replace(partial, folder)  # an empty folder is replaced by the rename itself
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise _os_error(folder, exc) from None
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


def _refuse_replacing_inputs(folder: Path) -> None:
    """An output folder about to be replaced may not hold a file this command read (say the data
    file a checkpoint's metadata names, found only once the checkpoint was loaded)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if _is_read(entry):
            raise UsageError(f"{entry} is an input of this command and lies in the output folder {folder}", hint="write the outputs to another folder")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
