"""The compositional probe: does a score prefer a clip's true caption to the same caption with the
events in reverse order (``order``), or with one count changed (``count``)?

In the spirit of CompA (Ghosh et al., ICLR 2024): for every caption of a split with a variant, the
clip is scored against both; accuracy = share of captions whose true text scores higher (a tie
counts one half), chance 0.5. Reported for the pair branch (co-attention), the dual branch
(pooled vectors) and, with score fusion, the system's fused score.

Variants come from the data when it has them (``coattn synth`` writes, per caption, the same words
with the events reversed and one count changed: ``synth_metadata.json``), and otherwise from
rewriting the captions (``coattn.captions``), which applies to the captions that put events in an
explicit order; ``applicability`` counts how many.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from coattn.captions import change_count, reverse_order
from coattn.features import SequenceFeatures

KINDS = ("order", "count")


@dataclass(frozen=True)
class ProbeItem:
    kind: str  # "order" | "count"
    clip: int  # row of the clip among the scored clips
    true: str
    variant: str


def items_from_metadata(path: str | os.PathLike, split_folder: str, fnames: list[str], captions: list[str],
                        caption_clip: list[int]) -> list[ProbeItem]:
    """Probe items of the captions that ``coattn synth`` wrote variants for (``synth_metadata.json``)."""
    meta = read_metadata(path)
    variants: dict[tuple[str, str], dict] = {}
    for key, entry in meta.items():
        for c in entry.get("captions", []) if isinstance(entry, dict) else []:
            variants[(key, c["text"])] = c
    out = []
    for text, clip in zip(captions, caption_clip):
        v = variants.get((f"{split_folder}/{fnames[clip]}", text))
        for kind, field in (("order", "reversed"), ("count", "count_changed")):
            if v and v.get(field):
                out.append(ProbeItem(kind, clip, text, v[field]))
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """``synth_metadata.json`` checked: a JSON object of clip -> {"captions": [{"text": ...}, ...]}; anything
    else is a one-line ``DataError`` naming the file and the entry."""
    from coattn.errors import DataError, DataNotFoundError

    path = Path(path)
    hint = "pass the synth_metadata.json that `coattn synth` wrote, or leave --metadata out to rewrite the captions"
    if not path.is_file():
        raise DataNotFoundError(f"{path}: variants file not found; {hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); {hint}") from None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); {hint}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: holds a JSON {type(meta).__name__}, not an object of clip -> captions; {hint}")
    for key, entry in meta.items():
        caps = entry.get("captions", []) if isinstance(entry, dict) else None
        if not isinstance(caps, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str)
                                                   for c in caps):
            raise DataError(f"{path}: entry {key!r} is not {{\"captions\": [{{\"text\": ...}}, ...]}}; {hint}")
    return meta


def items_by_rewriting(captions: list[str], caption_clip: list[int], seed: int = 0) -> list[ProbeItem]:
    """Probe items from rewriting the captions (``coattn.captions``); captions it cannot rewrite are skipped."""
    rng = random.Random(seed)
    out = []
    for text, clip in zip(captions, caption_clip):
        for kind, variant in (("order", reverse_order(text)), ("count", change_count(text, rng))):
            if variant:
                out.append(ProbeItem(kind, clip, text, variant))
    return out


def applicability(captions: list[str]) -> dict[str, int]:
    """How many captions each rewrite applies to (for a split of real captions without metadata)."""
    rng = random.Random(0)
    return {"captions": len(captions), "order": sum(reverse_order(c) is not None for c in captions),
            "count": sum(change_count(c, rng) is not None for c in captions)}


@torch.no_grad()
def run_probe(model, audio: SequenceFeatures, items: list[ProbeItem], fusion: float = 0.0,
              tile_pairs: int = 16384, batch: int = 256) -> dict[str, dict[str, float]]:
    """Accuracy per kind and branch: {kind: {"n", "pair", "dual", "fused"?}} (module docstring)."""
    from coattn.retrieval.tiling import score_pair_list

    if not items:
        return {}
    texts = list(dict.fromkeys([i.true for i in items] + [i.variant for i in items]))
    row = {t: k for k, t in enumerate(texts)}
    feats = SequenceFeatures.cat([model.encode_text(texts[k:k + batch]) for k in range(0, len(texts), batch)])
    clips = torch.tensor([i.clip for i in items])
    true, var = torch.tensor([row[i.true] for i in items]), torch.tensor([row[i.variant] for i in items])
    dual_t, dual_a = model.dual_embed_text(feats), model.dual_embed_audio(audio)
    scores = {"dual": ((dual_t[true] * dual_a[clips]).sum(-1), (dual_t[var] * dual_a[clips]).sum(-1))}
    if model.has_pairwise:
        pt, pa = model.prepare_text(feats), model.prepare_audio(audio)
        both = score_pair_list(model, pt, pa, torch.cat([true, var]), torch.cat([clips, clips]), tile_pairs)
        scores["pair"] = (both[: len(items)], both[len(items):])
        if fusion:
            scores["fused"] = tuple(p + fusion * d for p, d in zip(scores["pair"], scores["dual"]))
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        sel = torch.tensor([i.kind == kind for i in items])
        if not bool(sel.any()):
            continue
        out[kind] = {"n": int(sel.sum())}
        for branch, (s_true, s_var) in scores.items():
            wins = (s_true[sel] > s_var[sel]).float() + 0.5 * (s_true[sel] == s_var[sel]).float()
            out[kind][branch] = float(wins.mean())
    return out


def format_probe(result: dict[str, dict[str, float]]) -> str:
    """One line per kind: ``order probe (n=490): pair 0.93, dual 0.51, fused 0.90 (chance 0.50)``."""
    lines = []
    for kind, r in result.items():
        parts = ", ".join(f"{b} {r[b]:.2f}" for b in ("pair", "dual", "fused") if b in r)
        lines.append(f"{kind} probe (n={r['n']}): {parts} (chance 0.50)")
    return "\n".join(lines)
