"""File I/O, the ground floor: atomic writes, safetensors, safe `torch.load`, and the one place
where an operating-system error on a path the user gave becomes a `UserError` naming the path
and what to do.

Everything here imports only the standard library, torch/safetensors and `reslab.errors`, so any
module (plots included) can write files without pulling in the engine.

Rules:
- a file is written to a temporary name beside it, fsynced, then renamed over the target: a crash
  at any moment leaves the old file or the new one, never half of one; a SIGTERM or SIGINT
  removes the temporary file (`clean_up_on_signals`: every live one is registered);
- an output never replaces a non-regular file (a FIFO or device: as root, `--out /dev/null`
  would replace the real one) nor the command's own input (`check_writable`);
- nothing opens a non-regular file (FIFO, device, socket) where a regular file is expected: that
  would block forever or read garbage; `regular_file` refuses them first;
- OSErrors on user paths (missing, exists, not a directory, permission, read-only file system,
  full disk, file-size limit) are exit-2 errors with a hint, not tracebacks.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import stat
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError

# errno -> what the user can do about it.
_HINTS = {
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "it already exists",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory (give a file)",
    errno.EACCES: "permission denied (check the file's permissions)",
    errno.EPERM: "operation not permitted (check the file's permissions)",
    errno.EROFS: "read-only file system (write somewhere else)",
    errno.ENOSPC: "No space left on device (free space or write somewhere else)",
    errno.EDQUOT: "disk quota exceeded (free space or write somewhere else)",
    errno.EFBIG: "file too large for this system's file-size limit (ulimit -f)",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many symbolic links",
    errno.ETXTBSY: "the file is busy",
    errno.EMFILE: "too many open files",
    errno.ENXIO: "not a regular file (a FIFO or device?)",
}
# Errors of the user's environment (exit 2) rather than of reslab.
USER_ERRNOS = frozenset(_HINTS)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def os_errno(e: BaseException) -> int | None:
    """The errno behind e or its chain: torch.save wraps the OSError in a RuntimeError,
    safetensors reports it as text ending in `(os error 28)`."""
    chain: list[BaseException] = []
    seen: BaseException | None = e
    while seen is not None and seen not in chain:  # a hand-made cause could loop
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno
        found = re.search(r"\(os error (\d+)\)", str(err))
        if found:
            return int(found.group(1))
    return None


def path_error(e: BaseException, path: str | Path, action: str) -> UserError | None:
    """A UserError `cannot ACTION PATH: REASON` for an OS error the user can fix, else None."""
    code = os_errno(e)
    if code not in USER_ERRNOS:
        return None
    return UserError(f"cannot {action} {path}: {_HINTS[code]}")


def regular_file(path: str | Path, what: str = "file") -> Path:
    """path, checked to be an existing regular file (symlinks followed) without opening it.

    A FIFO or device would block a reader or never end, so they are refused before any open."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as e:
        raise path_error(e, path, f"read {what}") or e from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is not a regular file (a FIFO, socket or device)")
    return path


def read_bytes(path: str | Path, what: str = "file", limit: int | None = None) -> bytes:
    """The bytes of a regular file; UserError when unreadable or larger than limit."""
    path = regular_file(path, what)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1 if limit is not None else -1)
    except OSError as e:
        raise path_error(e, path, f"read {what}") or e from None
    if limit is not None and len(data) > limit:
        raise UserError(f"{what} {path} is larger than {limit:,} bytes, the most reslab reads")
    return data


def read_text(path: str | Path, what: str = "file", limit: int | None = None) -> str:
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start}): the "
                        "file is damaged or not what reslab wrote there") from None


def ensure_dir(path: str | Path, what: str = "directory") -> Path:
    """Creates path (and parents) as a directory; UserError when it is a file or not creatable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{what} {path}: a part of the path is a file, not a directory") from None
    except OSError as e:
        raise path_error(e, path, f"create {what}") or e from None
    return path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether a and b name one existing file (links and relative paths resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(path: str | Path, what: str = "file",
                   inputs: Sequence[str | Path] = ()) -> Path:
    """Fails at once where writing path later would (so a long job does not run for nothing):
    a directory at path, a non-regular file there (FIFO, device, socket: never replaced), one
    of the command's `inputs` (it would be replaced by its own output), a file where a parent
    directory should be, or a directory (the nearest existing parent) where files cannot be
    created (permissions, read-only file system). Creates nothing."""
    path = Path(path)
    if not path.name or path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a directory (name a file in it)")
    _refuse_non_regular(path, what)
    for source in inputs:
        if same_file(path, source):
            raise UserError(f"cannot write {what} {path}: it is the input {source}, which the "
                            "output would replace; write it elsewhere")
    parent = path.absolute().parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {what} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: no permission to create files in {parent}"
                        + (" (read-only file system)" if _read_only(parent) else ""))
    return path


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _refuse_non_regular(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # absent (or unreadable: the write says why)
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise UserError(f"cannot write {what} {path}: it is not a regular file (a FIFO, device "
                        "or socket), which an output never replaces; write to a file")


# Temporary files being written now: a signal removes them (clean_up_on_signals).
_LIVE_TEMPS: set[str] = set()
_LIVE_LOCK = threading.RLock()  # re-entrant: the handler runs in the thread that may hold it


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: no `except Exception` stops it);
    the command line exits 143."""


def remove_live_temps() -> None:
    """Removes every temporary file an atomic write has open (any thread)."""
    with _LIVE_LOCK:
        live = list(_LIVE_TEMPS)
    for tmp in live:
        try:
            os.unlink(tmp)
        except OSError:
            pass


_HANDLER_PID = [0]  # the process that installed the handlers (forked workers inherit them)


def _on_signal(signum: int, frame: Any) -> None:
    forked = os.getpid() != _HANDLER_PID[0]  # a DataLoader worker: its files are the parent's
    if not forked:
        remove_live_temps()  # writes in other threads do not see the exception raised here
    if signum == signal.SIGINT:  # as Python's own handler
        raise KeyboardInterrupt
    if forked:  # die as the worker would have without these handlers
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(signal.Signals(signum).name)


def clean_up_on_signals() -> Callable[[], None]:
    """SIGTERM and SIGINT remove every live temporary file, then raise (Terminated,
    KeyboardInterrupt) so that the command unwinds and exits (143, 130) without leaving a
    `.NAME.*.tmp` behind. Training replaces these handlers with its own while it runs (it
    saves its state first) and restores them. Returns a function that puts back the handlers
    found (a command run inside another program leaves its signals as they were)."""
    old: dict[int, Any] = {}
    _HANDLER_PID[0] = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread
            pass

    def restore() -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    return restore


def atomic_write(path: str | Path, write: Callable[[str], None], what: str = "file") -> None:
    """Calls write(tmp_path), fsyncs, then renames onto path: readers see old or new, never half.

    An OS error the user can fix (full disk, read-only, permission, file-size limit, a directory
    where the file should go) raises UserError naming path; the previous file is left as it was.
    A non-regular file at path (FIFO, device) is refused, never replaced."""
    path = Path(path)
    if not path.name or path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a directory (name a file in it)")
    _refuse_non_regular(path, what)
    ensure_dir(path.parent)
    with _LIVE_LOCK:  # registered before a signal could see the file and not know it
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise path_error(e, path, f"write {what}") or e from None
        _LIVE_TEMPS.add(tmp)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600 (and some writers recreate the file): results follow the umask
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception):
            err = path_error(e, path, f"write {what}")
            if err is not None:
                raise err from None
        raise
    finally:
        with _LIVE_LOCK:
            _LIVE_TEMPS.discard(tmp)


def atomic_write_text(path: str | Path, text: str, what: str = "file") -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), what)


# --- safetensors ----------------------------------------------------------------------------

def save_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str],
                     what: str = "checkpoint") -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), what)


def is_safetensors(path: str | Path) -> bool:
    """safetensors starts with a little-endian u64 header length, then the JSON header."""
    path = regular_file(path, "checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise path_error(e, path, "read checkpoint") or e from None
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and n <= path.stat().st_size - 8


def load_safetensors(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, raw string metadata) of a safetensors file, read once; UserError naming the
    file when it is not a readable safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = regular_file(path, "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except OSError as e:
        raise path_error(e, path, "read checkpoint") or UserError(
            f"cannot read checkpoint {path}: {e}") from None
    except (SafetensorError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: it is not a readable safetensors file "
                        f"({reason[:200]}); the file is damaged or truncated: copy it again"
                        ) from None
    return tensors, raw


# --- torch.load, never executing pickled code -----------------------------------------------

def torch_load_safe(path: str | Path, safe_globals: Sequence[type] = ()) -> Any:
    """torch.load(weights_only=True): tensors and plain containers (plus safe_globals), never
    pickled code. Errors are torch's own; `unpickle_failure` explains them."""
    import torch

    path = regular_file(path, "checkpoint")
    with warnings.catch_warnings():
        # torch notes pickle protocols it did not write; the error that follows says more.
        warnings.simplefilter("ignore", UserWarning)
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)


def unpickle_failure(e: Exception) -> tuple[str | None, str]:
    """(the global a refused pickle needs, or None; a one-line reason) of a torch_load_safe error.

    A pickle that references a class or function (GLOBAL) is what weights_only refuses: loading
    it could run arbitrary code."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    line = text.splitlines()[0] if text else ""
    return (found.group(1) if found else None,
            unpickler_reason(e) or f"{type(e).__name__}: {line}")


def unpickler_reason(e: Exception) -> str | None:
    """Why torch's restricted unpickler stopped (the file is a pickle), or None for an error of
    another reader (a zip reader's KeyError on a text file, say nothing a user can act on)."""
    reason = re.search(r"WeightsUnpickler error: \s*(.+)", str(e))
    return reason.group(1) if reason else None


def save_torch(path: str | Path, obj: Any, what: str = "training state") -> None:
    """torch.save of plain containers and tensors, atomically."""
    import torch

    def write(tmp: str) -> None:
        # Through a Python file: torch's own path writer reports a full disk without its errno.
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write, what)
