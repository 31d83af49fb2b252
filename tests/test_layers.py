"""The house rules: the library imports without Lightning, imports only downwards, and no file
import cycle exists anywhere in the project's packages."""
from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO

PACKAGES = ("coattn", "data_modules", "callbacks")
APP = ("coattn.train", "data_modules", "callbacks")
TOOLS = ("coattn.tools",)
ENTRY = ("coattn.cli", "coattn.__main__")


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every .py file of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = str(path)
    return out


def layer(name: str) -> str:
    if name.startswith(ENTRY):
        return "entry"
    if name.startswith(TOOLS):
        return "tools"
    if name.startswith(APP):
        return "app"
    return "library"


def library_modules() -> list[str]:
    return [m for m in modules() if layer(m) == "library"]


def imports(name: str, path: str, known: dict[str, str]) -> set[str]:
    """Project modules ``path`` imports, at any level (module top, functions, TYPE_CHECKING blocks)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    pkg = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not an edge
                found.add(t)
    return found


def test_library_imports_without_lightning():
    """Every library module, and the public API, in a process where Lightning cannot be imported."""
    mods = library_modules()
    code = "\n".join([
        "import sys",
        "for name in ('lightning', 'pytorch_lightning', 'lightning_fabric', 'lightning_utilities'):",
        "    sys.modules[name] = None  # any import of it raises ImportError",
        "import importlib",
        f"for m in {mods!r}:",
        "    importlib.import_module(m)",
        "from coattn import CoAttnModel, CoAttentionCascade",
        "import coattn",
        "for n in coattn.__all__:",
        "    getattr(coattn, n)",
        "assert not any(k.startswith(('lightning', 'data_modules', 'callbacks', 'coattn.train', 'coattn.tools'))",
        "               for k in sys.modules if sys.modules[k] is not None), sorted(sys.modules)",
        "print('ok', len(sys.modules))",
    ])
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]
    assert len(mods) >= 20 and "coattn.model" in mods and "coattn.retrieval.tiling" in mods


def test_imports_go_only_downwards_and_form_no_cycle():
    known = modules()
    graph = {m: imports(m, p, known) for m, p in known.items()}
    order = {"library": 0, "app": 1, "tools": 2, "entry": 3}
    upward = [f"{m} -> {t}" for m, ts in graph.items() for t in ts if order[layer(t)] > order[layer(m)]]
    assert not upward, upward
    # strongly connected components with more than one file (Tarjan)
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_source_file_over_450_lines():
    long = {m: n for m, p in modules().items() if (n := len(open(p, encoding="utf-8").read().splitlines())) > 450}
    assert not long, long
