"""Import laion-clap's HTS-AT without running ``laion_clap/__init__``.

Why: the package ``__init__`` imports ``training/data.py``, which calls ``from_pretrained`` for
three tokenizers at import time: offline that retries for ~4 min per tokenizer and then returns
5-token junk (see shared/ENVIRONMENT.md). We only need ``clap_module/htsat.py`` (plus its
relative imports ``utils.py`` and ``feature_fusion.py``), so we register empty stand-ins for the
two parent packages, import the submodule (~1.5 s), and then take the stand-ins away again so a
later, deliberate ``import laion_clap`` still gets the real package.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

_PARENTS = ("laion_clap", "laion_clap.clap_module")


def _package_dir() -> Path:
    # find_spec on a top-level name locates the package without executing its __init__
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("laion-clap is not installed (pip install laion-clap==1.1.7); coattn needs its HTS-AT code")
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def import_htsat() -> types.ModuleType:
    """Return the ``laion_clap.clap_module.htsat`` module, importing it without the package init."""
    name = "laion_clap.clap_module.htsat"
    if name in sys.modules:
        return sys.modules[name]
    if "laion_clap" in sys.modules and not getattr(sys.modules["laion_clap"], "__coattn_stub__", False):
        return importlib.import_module(name)  # the real package is already imported: nothing to avoid
    root = _package_dir()
    saved = {p: sys.modules.get(p) for p in _PARENTS}
    for pkg, path in zip(_PARENTS, (root, root / "clap_module")):
        stub = types.ModuleType(pkg)
        stub.__path__ = [str(path)]  # makes it a package so relative imports resolve into the real files
        stub.__coattn_stub__ = True
        sys.modules[pkg] = stub
    try:
        return importlib.import_module(name)
    finally:
        # drop the stand-ins; the imported submodules stay cached in sys.modules under their full names
        for pkg, prev in saved.items():
            if prev is None:
                sys.modules.pop(pkg, None)
            else:
                sys.modules[pkg] = prev


@functools.lru_cache(maxsize=None)
def clap_model_config(filename: str) -> dict:
    """Read one of laion-clap's ``clap_module/model_configs/*.json`` files (e.g. ``HTSAT-tiny.json``)."""
    path = _package_dir() / "clap_module" / "model_configs" / filename
    with open(path) as f:
        return json.load(f)
