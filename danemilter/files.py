"""Reading the files a user names (policy, certificates, OCSP responses): regular files
only, so that a FIFO or a device never makes a command wait forever."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from danemilter.errors import InputError


class FileReadError(InputError):
    """A file that cannot be read, or is not a regular file; ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read {path}: {reason}")


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of ``path``; InputError (one line) when it cannot be read or is not a
    regular file. Opened non-blocking: opening a FIFO without a writer would block."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileReadError(path, str(exc.strerror or exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileReadError(path, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return stream.read()
    except OSError as exc:
        raise FileReadError(path, str(exc.strerror or exc)) from None
    finally:
        os.close(fd)


def file_version(path: str | Path | None) -> object:
    """What changes when the file at ``path`` is rewritten (size, mtime), for callers
    that keep something built from it; None for no path, the errno when it is gone."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError as exc:
        return exc.errno
    return info.st_size, info.st_mtime_ns
