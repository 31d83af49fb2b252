"""Where a run came from, and what must never be written: provenance and secret redaction.

``run_info()`` is logged with every run (W&B config, ``coattn_config.yaml``'s companion): the git
SHA and whether the work tree was dirty, package versions, Python, the platform and the command
line with secret-looking arguments redacted. ``redact()`` replaces the values of secret-looking
keys in anything coattn writes (configs, augmentation caches).
"""
from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("coattn", "torch", "torchaudio", "lightning", "transformers", "tokenizers", "torchmetrics", "wandb",
            "jsonargparse", "numpy", "laion-clap", "sweeps")
SECRET_KEY = re.compile(r"(?i)(api[_-]?key|secret|password|passwd|access[_-]?token|auth[_-]?token|credential)")
SECRET_ARG = re.compile(r"(?i)((?:api[_-]?key|secret|password|passwd|access[_-]?token|auth[_-]?token)[^=\s]*=)\S+")


def git_info(repo: Path = REPO) -> dict[str, Any]:
    """SHA of HEAD and whether the work tree differs from it (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=20, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def run_info() -> dict[str, Any]:
    """What produced a run: git SHA, package versions, Python, the command line (redacted)."""
    return {"git": git_info(), "packages": package_versions(), "python": platform.python_version(),
            "platform": platform.platform(), "argv": [SECRET_ARG.sub(r"\1<redacted>", a) for a in sys.argv]}


def redact(obj: Any) -> Any:
    """A copy of a nested dict/list with the values of secret-looking keys replaced."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if isinstance(k, str) and SECRET_KEY.search(k) and v is not None else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj
