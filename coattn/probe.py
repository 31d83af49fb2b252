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


def twin_clips(path: str | os.PathLike, split_folder: str, fnames: list[str]) -> torch.Tensor | None:
    """(M,) bool: which clips of a split have an order twin in it (the same events in the reverse order,
    ``coattn synth --sounds`` writes ``"twin"`` per clip), or None when the metadata records no twins.

    A twin is the one clip a pooled (dual) vector cannot tell apart: its captions are the queries
    where only *when* things happen decides the ranking, so they are reported apart."""
    meta = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = [meta.get(f"{split_folder}/{f}") for f in fnames]
    if not any(isinstance(e, dict) and "twin" in e for e in entries):
        return None
    return torch.tensor([bool(isinstance(e, dict) and e.get("twin")) for e in entries])


def subset_metrics(per_query: dict[str, torch.Tensor], caption_clip: torch.Tensor,
                   clip_groups: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Text-to-audio metrics over the captions of each clip group: {group: {"n", metric: value}}.

    ``per_query``: ``coattn.metrics.per_query_metrics`` of the whole split (ranks among all clips, so a
    twin query still competes with every clip); only the t2a vectors (one entry per caption) are kept."""
    out = {}
    for name, clips in clip_groups.items():
        sel = clips.to(caption_clip.device)[caption_clip].cpu()
        out[name] = {"n": int(sel.sum())}
        for key, vec in per_query.items():
            if key.startswith("t2a_") and not key.endswith(("medR", "meanR")):
                out[name][key] = float(vec[sel].double().mean()) if bool(sel.any()) else float("nan")
    return out


def format_subsets(result: dict[str, dict[str, dict[str, float]]]) -> str:
    """``twin queries (n=200): t2a mAP@10 fused 81.2, pair 80.1, dual 62.0 | other queries (n=300): ...``."""
    groups = []
    for group in ("twin", "other"):
        cells = [f"{branch} {100 * r[group]['t2a_mAP@10']:.1f}" for branch, r in result.items() if group in r]
        if cells:
            n = next(r[group]["n"] for r in result.values() if group in r)
            groups.append(f"{group} queries (n={n}): t2a mAP@10 " + ", ".join(cells))
    return " | ".join(groups)


def applicability(captions: list[str]) -> dict[str, int]:
    """How many captions each rewrite applies to (for a split of real captions without metadata)."""
    rng = random.Random(0)
    return {"captions": len(captions), "order": sum(reverse_order(c) is not None for c in captions),
            "count": sum(change_count(c, rng) is not None for c in captions)}


@torch.no_grad()
def probe_scores(model, audio: SequenceFeatures, items: list[ProbeItem], fusion: float = 0.0,
                 tile_pairs: int = 16384, batch: int = 256) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per item and branch, the score of the true caption and of its variant against the item's clip:
    {branch: (s_true (N,), s_variant (N,))} for ``dual``, ``pair`` (a cascade) and ``fused`` (with ``fusion``)."""
    from coattn.retrieval.tiling import score_pair_list

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
    return scores


def wins(s_true: torch.Tensor, s_variant: torch.Tensor) -> torch.Tensor:
    """1 where the true caption scores higher, 0.5 on a tie, 0 where the variant does."""
    return (s_true > s_variant).float() + 0.5 * (s_true == s_variant).float()


def run_probe(model, audio: SequenceFeatures, items: list[ProbeItem], fusion: float = 0.0,
              tile_pairs: int = 16384, batch: int = 256,
              scores: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict[str, dict[str, float]]:
    """Accuracy per kind and branch: {kind: {"n", "pair", "dual", "fused"?}} (module docstring); ``scores``:
    ``probe_scores`` of the same items, when already computed."""
    if not items:
        return {}
    scores = scores or probe_scores(model, audio, items, fusion, tile_pairs, batch)
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        sel = torch.tensor([i.kind == kind for i in items])
        if not bool(sel.any()):
            continue
        out[kind] = {"n": int(sel.sum())}
        for branch, (s_true, s_var) in scores.items():
            out[kind][branch] = float(wins(s_true[sel], s_var[sel]).mean())
    return out


def format_probe(result: dict[str, dict[str, float]]) -> str:
    """One line per kind: ``order probe (n=490): pair 0.93, dual 0.51, fused 0.90 (chance 0.50)``."""
    lines = []
    for kind, r in result.items():
        parts = ", ".join(f"{b} {r[b]:.2f}" for b in ("pair", "dual", "fused") if b in r)
        lines.append(f"{kind} probe (n={r['n']}): {parts} (chance 0.50)")
    return "\n".join(lines)
