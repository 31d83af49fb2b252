"""Atomic file writes: a temp file in the target folder (same file system), fsync, ``os.replace``.

A crash, a kill or a concurrent reader never sees half a file: the target holds either the old
complete content or the new one. Used for every result, index, dataset and tokenizer file.
(Checkpoints have their own writer, ``coattn.safety.atomic_torch_save``.)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, then move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        text_kw = {} if binary else {"encoding": "utf-8", "newline": ""}  # csv handles newlines
        with os.fdopen(fd, "wb" if binary else "w", **text_kw) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Leave no temp file behind whatever went wrong (including KeyboardInterrupt).
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)
