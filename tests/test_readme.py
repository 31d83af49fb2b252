"""The README's notebook example runs as it is printed (so it cannot rot): the one ```python block
that calls `CoAttnModel.from_pretrained`, executed in a fresh interpreter in a folder where its
paths (`exported/demo`, `data/demo/evaluation`) are the tiny exported model and clips."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest

from coattn.tools import search as S
from tests.conftest import REPO
from tests.reliability_helpers import subprocess_env


def notebook_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if "CoAttnModel.from_pretrained(" in b]
    assert len(found) == 1, f"expected one README example that loads an exported model, found {len(found)}"
    return found[0]


def test_the_example_is_short():
    code = notebook_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 11  # "in ten lines" (+ the print)
    ast.parse(code)


@pytest.mark.slow
def test_readme_notebook_example_runs(exported_demo, tiny_clotho, tmp_path, capsys):
    _, _, folder = exported_demo
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported/demo").symlink_to(folder)
    (tmp_path / "data/demo").mkdir(parents=True)
    (tmp_path / "data/demo/evaluation").symlink_to(tiny_clotho / "evaluation")
    proc = subprocess.run([sys.executable, "-c", notebook_example()], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip().splitlines()[-1]
    names = ast.literal_eval(printed[:printed.index("]") + 1])
    # the ranking `coattn search` gives for the same query, model and scoring
    query = re.search(r'encode_text\(\["([^"]+)"\]\)', notebook_example()).group(1)
    capsys.readouterr()
    assert S.main([query, "--model", str(folder), "--audio-dir", str(tiny_clotho / "evaluation"), "--index-dir",
                   str(tmp_path / "index"), "--rerank-k", "16", "--top-k", "5", "--json"]) == 0
    expected = [f for _, _, f in json.loads(capsys.readouterr().out)["queries"][0]["results"]]
    assert names == expected and len(names) == 4
