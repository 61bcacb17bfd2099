"""Writes that never leave half a file: every file vitslim writes (models, checkpoints, overlays, ONNX,
caches) goes to a temporary file beside its target, is flushed to disk, then renamed over it. A failed
write names the path and the OS error (disk full, read-only folder) and leaves the target as it was."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .errors import UsageError, VitslimError, WriteError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, in one line, if ``path`` cannot be written (missing or read-only folder)."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"cannot write {target}: it is a folder; give a file name")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise UsageError(f"cannot write {target}: folder {target.parent} is not writable")
    return target


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)``, flush it to disk, then rename it onto ``path``: the target is either
    the old file or the whole new one, never a half-written file. A failed write (disk full, read-only
    folder, I/O error) removes the temporary file and raises :class:`WriteError` naming ``path`` and
    the OS error."""
    target = check_writable(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:  # a delayed ENOSPC or I/O error surfaces here, not after the rename
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what a saved model should have
        os.replace(tmp, target)
    except OSError as exc:
        raise WriteError(f"cannot write {target}: {exc.strerror or exc}") from None
    except VitslimError:
        raise
    except Exception as exc:  # a native writer's failure (torch's zip writer, safetensors) hides the OS error
        reason = _disk_trouble(exc, target.parent)
        if reason is None:
            raise
        raise WriteError(f"cannot write {target}: {reason}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _disk_trouble(exc: Exception, folder: Path) -> str | None:
    """The OS error behind a native writer's failure ``exc`` (from its message, else from the state of
    ``folder``), as the OS words it; None if the disk is not to blame."""
    import re

    found = re.search(r"os error (\d+)|\[Errno (\d+)\]", str(exc))
    if found:
        return os.strerror(int(found.group(1) or found.group(2)))
    try:
        st = os.statvfs(folder)
    except OSError as exc:
        return exc.strerror
    if st.f_bavail * st.f_frsize < (1 << 20):
        return os.strerror(28)  # ENOSPC: No space left on device
    if not os.access(folder, os.W_OK):
        return os.strerror(30)  # EROFS: Read-only file system
    return None


def torch_save(obj, path: str) -> None:
    """``torch.save`` through a Python file, so that a failed write raises the OS's own error
    (torch's zip writer turns it into an opaque RuntimeError)."""
    failure: list[OSError] = []

    class _Writer:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            try:
                return self.f.write(data)
            except OSError as exc:
                failure.append(exc)
                raise

        def flush(self):
            self.f.flush()

    with open(path, "wb") as f:
        try:
            torch.save(obj, _Writer(f))
        except RuntimeError:
            if failure:
                raise failure[0] from None
            raise
