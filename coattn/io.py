"""Files in and out, safely: the one atomic writer and the one checkpoint loader of coattn.

Writing (every result, index, dataset, tokenizer and checkpoint file goes through ``atomic_write``):
a temp file ``.coattn-<tag>-<pid>-<random>.partial`` in the target's own folder (same file system,
so the rename is atomic), fsync, ``os.replace`` over the target, fsync the folder. A crash, a kill
or a concurrent reader sees either the old complete file or the new complete one. (Lightning
2.6.6's own ``_atomic_save`` writes ``tempfile.mkstemp()`` in ``$TMPDIR`` and ``shutil.move``\\ s it:
a *copy* when ``$TMPDIR`` is another file system, so a kill during it truncates ``last.ckpt``.)
Partial files of killed writers are swept by ``clean_partials``. A full disk, a used-up quota or
a file size limit (``ulimit -f``) is an ``OutputError`` naming the file (one line, not torch's
"enforce fail at inline_container.cc"); the temp file is removed and the previous file stays.

Reading (``load_checkpoint``, for coattn's Lightning checkpoints and LAION-CLAP's files alike):
``torch.load(weights_only=True)`` always, whatever the caller or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
asks. A file that pickles code is refused with a ``CheckpointError`` naming the file and the
offending global. LAION-CLAP's files hold numpy scalars (the cosine schedule writes ``np.float64``
learning rates into the optimizer state), which plain ``weights_only=True`` rejects; with
``numpy_scalars=True``:

* pickle protocol <= 2 (what ``torch.save`` writes by default, and LAION-CLAP's training code
  calls it without ``pickle_protocol``): torch's own allowlisting, ``torch.serialization.safe_globals``
  with numpy's scalar/array constructors and dtype classes (``NUMPY_GLOBALS``);
* protocol >= 3 (a file re-saved with ``pickle_protocol=4``, say): torch 2.9's weights-only
  unpickler cannot parse it whatever is allowlisted (``Unsupported operand 149``, the FRAME opcode;
  pytorch/pytorch#118092), so coattn's allowlist unpickler reads it: the same guarantee, since it
  resolves only torch's weights-only globals and the same numpy constructors
  (tests/test_encoders.py::test_numpy_scalars_torch_allowlist_then_fallback shows both paths).
"""
from __future__ import annotations

import collections
import contextlib
import errno
import glob
import hashlib
import os
import pickle
import re
import tempfile
import types
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from coattn.errors import CheckpointError, CheckpointNotFoundError, OutputError

PARTIAL_PREFIX = ".coattn-"
PARTIAL_SUFFIX = ".partial"

if TYPE_CHECKING:  # torch is imported where it is used: `coattn synth` writes files without loading it
    import torch


# ---------------------------------------------------------------------------------------------- writing
def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every file system)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], binary: bool = True, tag: str = "tmp") -> None:
    """Call ``write(f)`` on a temp file next to ``path``, then move it into place (module docstring)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{PARTIAL_PREFIX}{tag}-{os.getpid()}-", suffix=PARTIAL_SUFFIX)
    try:
        text_kw = {} if binary else {"encoding": "utf-8", "newline": ""}  # csv handles its own newlines
        with os.fdopen(fd, "wb" if binary else "w", **text_kw) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # what a plain open() would give, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException as exc:  # leave no temp file behind, whatever went wrong (KeyboardInterrupt too)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        full = _full_disk(exc)
        if full is not None:  # torch.save hides the errno in a C++ "enforce fail" RuntimeError's context
            kept = "the previous file is kept" if os.path.exists(path) else "nothing was written there"
            raise OutputError(f"could not write {path}: {full.strerror} ({_FULL[full.errno]}); {kept}. Free "
                              "space or raise the limit, then run the command again") from exc
        raise
    _fsync_folder(folder)


_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
         errno.EFBIG: "the file size limit (ulimit -f) is reached"}


def _full_disk(exc: BaseException) -> OSError | None:
    """The OSError of a full disk, quota or file size limit in ``exc`` or the exceptions it came from."""
    seen: list[BaseException] = []
    while exc is not None and all(exc is not e for e in seen):
        if isinstance(exc, OSError) and not isinstance(exc, OutputError) and exc.errno in _FULL:
            return exc
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), binary=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through ``atomic_write`` (temp files ``.coattn-ckpt-<pid>-*.partial``); creates the
    folder and first sweeps partial files that killed writers left there."""
    import torch

    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    clean_partials(folder)
    atomic_write(path, lambda f: torch.save(obj, f), tag="ckpt")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_partial(name: str) -> bool:
    """True for a temp file of ``atomic_write`` (never a result, whatever its name says)."""
    return name.startswith(PARTIAL_PREFIX) and name.endswith(PARTIAL_SUFFIX)


def clean_partials(folder: str | os.PathLike) -> list[str]:
    """Remove ``atomic_write`` temp files of processes that no longer run (killed mid-write)."""
    removed = []
    for f in glob.glob(os.path.join(glob.escape(os.fspath(folder)), f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}")):
        m = re.match(re.escape(PARTIAL_PREFIX) + r"[^-]+-(\d+)-", os.path.basename(f))
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.remove(f)
                removed.append(f)
    return removed


# ---------------------------------------------------------------------------------------------- reading
def numpy_globals() -> list:
    """What a weights file with numpy scalars and arrays needs allowlisted (numpy 1.x names)."""
    import numpy as np

    multiarray = np.core.multiarray
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]  # numpy >= 1.25
    return [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def pickle_protocol(path: str | os.PathLike) -> int | None:
    """Pickle protocol of a torch zip checkpoint (its ``data.pkl`` starts with PROTO n); None otherwise."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            head = z.open(name).read(2) if name else b""
    except (zipfile.BadZipFile, OSError):
        return None
    return head[1] if len(head) == 2 and head[0] == 0x80 else None  # 0x80 = the PROTO opcode


def _restricted_pickle() -> types.ModuleType:
    """A ``pickle_module`` for torch.load whose Unpickler resolves only allowlisted globals.

    The same guarantee as ``weights_only=True`` (pickle runs code only through ``find_class``, and
    this one returns nothing but torch's weights-only allowlist and numpy's scalar/array
    constructors), built on Python's full unpickler so that every pickle protocol works.
    """
    import torch

    allowed: dict[str, object] = {}
    try:
        from torch._weights_only_unpickler import _get_allowed_globals  # torch's weights_only allowlist

        allowed.update(_get_allowed_globals())
    except ImportError:  # private API moved: fall back to what a plain state dict needs
        allowed.update({"collections.OrderedDict": collections.OrderedDict, "torch.Size": torch.Size,
                        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
                        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter})
    for obj in numpy_globals():  # the same numpy constructors as torch's safe_globals path
        allowed[f"{obj.__module__}.{obj.__name__}"] = obj
        if obj.__module__ == "numpy.core.multiarray":  # numpy 2.x pickles name them numpy._core.*
            allowed[f"numpy._core.multiarray.{obj.__name__}"] = obj

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            key = f"{module}.{name}"
            if key in allowed:
                return allowed[key]
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {key} is not allowlisted")

    mod = types.ModuleType("coattn_restricted_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    return mod


def _unsafe(path: str, exc: Exception, hint: str) -> CheckpointError:
    found = re.search(r"GLOBAL (\S+)", str(exc))
    what = f" (it contains {found.group(1)})" if found else ""
    return CheckpointError(
        f"refusing to load {path!r}: it is not a plain weights file{what}: it pickles objects other than tensors, "
        "containers and plain values, and coattn refuses to unpickle anything else (torch.load with weights_only=True "
        "only: unpickling could run arbitrary code). If you trust the file, re-save just its tensors and plain "
        f"values from a Python session.{' ' + hint if hint else ''}")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False,
                    numpy_scalars: bool = False, hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the problem.

    ``numpy_scalars``: also read files that hold numpy scalars/arrays (LAION-CLAP's): through
    torch's ``safe_globals`` up to pickle protocol 2, through the allowlist unpickler above it
    (module docstring). ``hint``: appended to every error (where to get a good file).
    """
    import torch

    p, name = Path(path).expanduser(), os.fspath(path)
    tail = f" {hint}" if hint else ""
    if not p.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {name!r}.{tail}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {name!r} is empty (0 bytes): an interrupted copy?{tail}")
    with open(p, "rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save: a zip archive, or (legacy) a pickle
        raise CheckpointError(f"{name!r} is not a torch checkpoint (it starts with {head!r}, not a zip archive or a "
                              f"pickle): the wrong file?{tail}")
    try:
        with warnings.catch_warnings():  # torch warns about protocol 4 just before failing on it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if not numpy_scalars:
            raise _unsafe(name, exc, hint) from None
    except Exception as exc:  # noqa: BLE001 - bytes that are not a checkpoint make torch raise almost anything
        raise _unreadable(name, exc, tail) from None
    # numpy scalars (LAION-CLAP): a readable torch file whose pickle names numpy globals
    try:
        if (pickle_protocol(p) or 0) <= 2:  # torch's own mechanism reads these
            with torch.serialization.safe_globals(numpy_globals()):
                return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
        return torch.load(p, map_location=map_location, weights_only=False, pickle_module=_restricted_pickle())
    except pickle.UnpicklingError as exc:
        raise _unsafe(name, exc, hint) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _unreadable(name, exc, tail) from None


def _unreadable(name: str, exc: Exception, tail: str) -> CheckpointError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return CheckpointError(f"cannot read checkpoint {name!r} (truncated, or not a torch checkpoint): "
                           f"{type(exc).__name__}: {first}{tail}")


# ---------------------------------------------------------------------------------------------- identities
def file_identity(path: str | os.PathLike) -> str:
    """``path|mtime|size`` of a file: a cheap cache key that changes when the file is replaced."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return f"{p}|mtime={st.st_mtime_ns}|size={st.st_size}"


def weights_digest(module: torch.nn.Module) -> str:
    """Short SHA-1 of every tensor in ``module.state_dict()``: the identity of (e.g. randomly initialised) weights."""
    import torch

    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


FINGERPRINT_BLOCK = 4096


def file_fingerprint(path: str | os.PathLike, block: int = FINGERPRINT_BLOCK) -> str:
    """Short SHA-1 of a file's size and of three ``block``-byte samples of its content (start, middle,
    end): 3 reads of 4 KiB whatever the size, so a file replaced by another of the same size (and
    mtime) is told apart, without reading whole audio folders or checkpoints. An edit confined to
    bytes outside the samples is not seen."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(str(size).encode())
        for at in dict.fromkeys((0, max(0, size // 2 - block // 2), max(0, size - block))):
            f.seek(at)
            h.update(f.read(block))
    return h.hexdigest()[:16]
