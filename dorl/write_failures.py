"""Writes the file system refused (a full disk, a quota, a read-only or forbidden folder): an
input error of the machine, reported as one line naming the file and the errno, not a traceback.

HDF5 does not report a full disk to its caller: h5py's writes and ``flush`` return, the errors
surface while its objects are freed ("Exception ignored"), the file is left damaged, and the
interpreter can end in a segmentation fault. So every HDF5 writer first asks
:func:`ensure_room` for the bytes it is about to write, and a full disk is an ``OSError``
(ENOSPC) before HDF5 is touched. Errors HDF5 does raise carry their errno only in the message
(``errno = 28``); :func:`write_failure` reads both kinds.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from dorl.errors import InputError

#: The errnos that mean "this machine cannot write there", not a bug.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                          errno.EPERM})
_HDF5_ERRNO = re.compile(r"errno = (\d+)")
_HDF5_FILE = re.compile(r"(?:filename|name) = '([^']+)'")


#: Room kept free beyond the payload: HDF5's metadata, chunk indexes and attributes.
ROOM_MARGIN_BYTES = 1 << 20
ROOM_MARGIN_FRACTION = 0.1


def ensure_room(path: str | os.PathLike, nbytes: int) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path`` when its file system has less free space than
    ``nbytes`` plus a margin (:data:`ROOM_MARGIN_BYTES`, :data:`ROOM_MARGIN_FRACTION`)."""
    path = Path(path)
    folder = next((p for p in (path.parent, *path.parents) if p.is_dir()), Path("."))
    needed = int(nbytes * (1 + ROOM_MARGIN_FRACTION)) + ROOM_MARGIN_BYTES
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {free / 2**20:.1f} MiB free, "
                                    f"{needed / 2**20:.1f} MiB needed", str(path))


class StoreWriteError(InputError):
    """A resumable store could not be written; its rows so far are on disk, and the same
    command resumes from them once the disk has room."""


def write_failure(exc: BaseException) -> tuple[int, str | None] | None:
    """``(errno, filename)`` when ``exc`` is a write the file system refused, else None."""
    if not isinstance(exc, OSError):
        return None
    code, filename = exc.errno, exc.filename
    if code is None:
        found = _HDF5_ERRNO.search(str(exc))
        code = int(found.group(1)) if found else None
        named = _HDF5_FILE.search(str(exc))
        filename = named.group(1) if named else filename
    if code not in WRITE_ERRNOS:
        return None
    return code, None if filename is None else str(filename)


def describe(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """One line: the file, the errno's text and its name (``exc`` is a :func:`write_failure`;
    a permission error may come from a read as well, so the line does not say which)."""
    code, filename = write_failure(exc) or (exc.errno, exc.filename)
    where = filename or (None if path is None else str(path)) or "a file"
    text = exc.strerror if isinstance(exc.strerror, str) and exc.errno == code \
        else os.strerror(code)
    return f"{where}: {text} ({errno.errorcode.get(code, code)})"
