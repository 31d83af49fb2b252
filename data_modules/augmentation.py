"""Caption augmentation: choosing and storing paraphrases (the data-module side of ``coattn augment``).

Paraphrases from a language model drift: some change the meaning ("a dog barks" -> "a wolf
howls"). Keeping only the top-k closest to the original under a sentence encoder removes most
drift while keeping lexical variety. Files:

* paraphrase JSONL (input, also the resumable cache of ``coattn augment``): one object per line,
  ``{"caption": "...", "paraphrases": ["...", ...]}``.
* augmentation file (output, read by the data modules' ``augmentation_file``): JSON
  ``{"format": "coattn-augmentation/1", "encoder": ..., "top_k": k,
    "captions": {caption: [{"text": ..., "score": cosine}, ...]}}``.
  ``load_augmentation_file`` also accepts a plain ``{caption: [paraphrase, ...]}`` JSON and the
  JSONL above, so hand-made files work too.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterable

import torch

log = logging.getLogger("coattn.data")

Embed = Callable[[list[str]], torch.Tensor]  # list of N texts -> (N, D) float
FORMAT = "coattn-augmentation/1"


def read_paraphrase_jsonl(path: str | Path, strict: bool = False) -> dict[str, list[str]]:
    """caption -> paraphrases from JSONL; later lines add to earlier ones (a resumed cache).

    A truncated last line (a crash mid-write) is skipped with a warning unless ``strict``.
    """
    out: dict[str, list[str]] = {}
    path = Path(path)
    with open(path, "rb") as f:  # bytes: a line of binary garbage is one bad line, not a crash of the whole read
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError: reported like bad JSON
                obj = json.loads(line)
                caption, paras = obj["caption"], obj["paraphrases"]
                if not isinstance(caption, str) or not isinstance(paras, list):
                    raise TypeError("caption must be a string and paraphrases a list")
            except (ValueError, KeyError, TypeError) as exc:
                if strict:
                    from coattn.errors import DataError

                    raise DataError(f"{path}: line {n} is not a {{\"caption\", \"paraphrases\"}} "
                                    f"object: {exc}") from None
                log.warning("%s: skipping line %d (%s)", path, n, exc)
                continue
            known = out.setdefault(caption, [])
            known.extend(p for p in paras if isinstance(p, str) and p not in known)
    return out


def load_augmentation_file(path: str | Path) -> dict[str, list[str]]:
    """caption -> kept paraphrases, from any of the three formats in the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"augmentation_file {path} not found (write one with `coattn augment`)")
    text = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except ValueError:
        return read_paraphrase_jsonl(path, strict=True)
    if isinstance(obj, dict) and "caption" in obj and "paraphrases" in obj:  # a one-line JSONL
        return read_paraphrase_jsonl(path, strict=True)
    table = obj.get("captions", obj) if isinstance(obj, dict) else None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object of caption -> paraphrases, got {type(obj).__name__}")
    out = {}
    for caption, items in table.items():
        if not isinstance(items, list):
            raise ValueError(f"{path}: entry {caption!r} must be a list, got {type(items).__name__}")
        out[caption] = [i["text"] if isinstance(i, dict) else str(i) for i in items]
    return out


def normalise(text: str) -> str:
    """Whitespace, case and final punctuation do not make a paraphrase new."""
    return " ".join(text.lower().split()).rstrip(".!")


def select_top_k(paraphrases: dict[str, list[str]], embed: Embed, k: int = 3, min_score: float = -1.0,
                 batch_size: int = 256) -> dict[str, list[tuple[str, float]]]:
    """Per caption, the ``k`` paraphrases most cosine-similar to it (at least ``min_score``).

    Empty strings, copies of the original and duplicates (after ``normalise``) are dropped first.
    Every distinct text is embedded once, in batches of ``batch_size``.
    """
    cleaned: dict[str, list[str]] = {}
    for caption, paras in paraphrases.items():
        seen = {normalise(caption)}
        keep = []
        for p in paras:
            p = " ".join(p.split())
            if p and normalise(p) not in seen:
                seen.add(normalise(p))
                keep.append(p)
        cleaned[caption] = keep
    texts = sorted({t for c, ps in cleaned.items() if ps for t in (c, *ps)})
    row = {t: i for i, t in enumerate(texts)}
    vecs = []
    for i in range(0, len(texts), batch_size):
        with torch.no_grad():
            vecs.append(torch.as_tensor(embed(texts[i:i + batch_size])).float())
    emb = torch.nn.functional.normalize(torch.cat(vecs), dim=-1) if vecs else torch.empty(0, 1)
    out: dict[str, list[tuple[str, float]]] = {}
    for caption, ps in cleaned.items():
        if not ps:
            out[caption] = []
            continue
        scores = emb[[row[p] for p in ps]] @ emb[row[caption]]
        ranked = sorted(zip(ps, scores.tolist()), key=lambda x: (-x[1], x[0]))  # ties: alphabetical, stable
        out[caption] = [(p, round(s, 4)) for p, s in ranked if s >= min_score][:k]
    return out


def write_augmentation_file(path: str | Path, selected: dict[str, list[tuple[str, float]]], encoder: str,
                            k: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "encoder": encoder, "top_k": k,
           "captions": {c: [{"text": t, "score": s} for t, s in items] for c, items in selected.items()}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


# -- sentence encoders --------------------------------------------------------------------------


def ngram_embed(texts: Iterable[str], dim: int = 4096) -> torch.Tensor:
    """Hashed word + character-trigram counts: a model-free, deterministic lexical embedding.

    For tests and machines without a text model; it ranks by surface overlap, so it keeps
    close rewordings and drops paraphrases that share few words with the original.
    """
    texts = list(texts)
    out = torch.zeros(len(texts), dim)
    for i, t in enumerate(texts):
        t = normalise(t)
        grams = t.split() + [t[j:j + 3] for j in range(max(0, len(t) - 2))]
        for g in grams:
            h = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
            out[i, h % dim] += 1.0
    return out


def mean_pooled(encoder: torch.nn.Module, device: str | torch.device = "cpu") -> Embed:
    """``embed`` from a coattn TextEncoder (``encoder(texts) -> SequenceFeatures``): masked mean of tokens.

    Mean pooling rather than the pooler: the pooler of an encoder trained for retrieval is tuned
    to its projection head, while the token mean is a standard sentence embedding (SBERT).
    """
    encoder = encoder.to(device).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            f = encoder(list(texts))
            w = f.mask.unsqueeze(-1).to(f.states.dtype)
            return ((f.states * w).sum(1) / w.sum(1).clamp_min(1.0)).float().cpu()

    return embed
