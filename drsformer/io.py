"""File helpers, the one place for them: atomic writes that respect the umask, strict JSON.

``atomic_write(path, write)`` writes through a temporary file beside ``path`` and renames it into place, so
a reader (or a crash) never sees half a file; the file gets the mode a plain ``open()`` would (the
umask's), not ``mkstemp``'s 0600. ``write_json`` refuses NaN and infinity, which strict JSON parsers reject.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write) -> None:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, value, make_parents: bool = True) -> Path:
    """``value`` as indented strict JSON at ``path``, atomically; ``ValueError`` (nothing written) for NaN/inf."""
    path = Path(path)
    text = json.dumps(value, indent=1, allow_nan=False) + "\n"  # before any file is touched
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: Path(p).write_text(text))
    return path
