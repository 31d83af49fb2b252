"""Where the count probe fails: its items grouped by what the variant changes, from `coattn probe --items`.

    coattn probe --config experiments/real/coattn.yaml --ckpt_path RUN/checkpoints/best.ckpt --items --out OUT
    python docs/real/count_breakdown.py OUT/probe_items.jsonl [more files: one column each]

A count item's caption and variant differ in a few words; the count each side states there is read from them
(twice / two -> 2, three / thrice -> 3, no count word -> 1), giving groups such as "1 -> 2" (a count added to an
event heard once) or "3 -> 2". Prints the share of items the pair and dual branches get right per group.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
from collections import defaultdict
from pathlib import Path

import torch

from coattn.probe import wins

COUNT_WORDS = {"twice": 2, "two": 2, "thrice": 3, "three": 3, "four": 4}


def stated(words: list[str]) -> int:
    found = [COUNT_WORDS[w] for w in words if w in COUNT_WORDS]
    return found[0] if found else 1


def change(true: str, variant: str) -> str:
    a, b = (re.findall(r"[a-z]+", t.lower()) for t in (true, variant))
    ops = [op for op in difflib.SequenceMatcher(None, a, b).get_opcodes() if op[0] != "equal"]
    old = [w for _, i1, i2, _, _ in ops for w in a[i1:i2]]
    new = [w for _, _, _, j1, j2 in ops for w in b[j1:j2]]
    return f"{stated(old)} -> {stated(new)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="+", type=Path, help="probe_items.jsonl files (e.g. one per seed)")
    a = p.parse_args(argv)
    table: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for col, path in enumerate(a.items):
        for line in path.read_text(encoding="utf-8").splitlines():
            it = json.loads(line)
            if it["kind"] != "count":
                continue
            won = [float(wins(torch.tensor(it[f"{b}_true"]), torch.tensor(it[f"{b}_variant"])))
                   if f"{b}_true" in it else float("nan") for b in ("pair", "dual")]
            table[change(it["true"], it["variant"])][col].append(tuple(won))
    print("| change | items | " + " | ".join(f"pair / dual ({p.parent.parent.parent.name or p})" for p in a.items)
          + " |")
    print("|---|---:|" + "---|" * len(a.items))
    for group in sorted(table, key=lambda g: -sum(len(v) for v in table[g].values())):
        cells = []
        for col in range(len(a.items)):
            rows = table[group].get(col, [])
            cells.append(" / ".join(f"{sum(r[k] for r in rows) / len(rows):.2f}" for k in (0, 1)) if rows else "-")
        print(f"| {group} | {len(table[group].get(0, []))} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
