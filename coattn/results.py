"""Evaluation artefacts: what `coattn test` writes and prints.

`write_results` leaves three files, each written atomically (temp file in the same folder,
then `os.replace`), so a crash or a concurrent reader never sees half a file:
    metrics.json        metrics, confidence intervals, chance levels, counts, tie rule, extra
    scores.npz          the full float32 score matrix (captions x clips) with captions,
                        clip names and caption_clip: anyone can recompute every metric
                        (`recompute_from_npz`), or try another metric, without the model
    submission_t2a.csv  DCASE task 6b text->audio submission: `caption,fname_1..fname_10`,
                        the 10 best clips per caption in rank order (same tie rule as ranks)
`write_submission_2025` adds submission_dcase2025.csv, the 2025 format (below).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from coattn import metrics as M
from coattn.io import atomic_write

SUBMISSION_K = 10


@dataclass
class EvaluationResult:
    """A scored split, as the last validation or test left it (``CoAttnRetrieval.last_evaluation``):
    what the callbacks (retrieval examples, ...) read instead of scoring again."""

    stage: str
    scores: Tensor  # (N captions, M clips) float32, on the CPU
    captions: list[str]
    fnames: list[str]
    caption_clip: Tensor  # (N,) row of each caption's clip
    metrics: dict[str, float]

    def __getitem__(self, key: str) -> Any:  # ev["scores"], as for coattn.batch.Batch
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


def _jsonable(x: Any) -> Any:
    """Tensors, numpy values, paths, tuples -> plain JSON; NaN/inf -> None (strict JSON)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)  # Path, dtype, config objects


# ---------------------------------------------------------------------------- writers
def write_results(
    out_dir: str | os.PathLike,
    scores: Tensor,
    caption_clip: Tensor,
    captions: Sequence[str],
    clip_names: Sequence[str],
    metrics: Mapping[str, float],
    ci: Mapping[str, tuple[float, float]],
    chance: Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write metrics.json, scores.npz and submission_t2a.csv into out_dir; return their paths.

    `ci` is what `metrics.bootstrap_ci` returns (95 % unless the caller chose another alpha;
    put the level in `extra` if so). `extra`: checkpoint path, model config, dataset, etc.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = scores.detach().to("cpu", torch.float32).numpy()
    cc = torch.as_tensor(caption_clip).detach().cpu().long().numpy()
    n, m = s.shape
    if len(captions) != n or len(clip_names) != m or cc.shape != (n,):
        raise ValueError(
            f"scores {s.shape} need {n} captions / caption_clip entries and {m} clip names; "
            f"got {len(captions)}, {cc.shape[0] if cc.ndim else 0} and {len(clip_names)}"
        )
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")

    counts = np.bincount(cc, minlength=m)
    report = {
        "metrics": metrics,
        "ci": {k: list(v) for k, v in ci.items()},
        "ci_method": "percentile bootstrap over queries (t2a: captions, a2t: clips)",
        "chance": chance,
        "counts": {
            "n_captions": n,
            "n_clips": m,
            "n_clips_with_captions": int((counts > 0).sum()),
            "captions_per_clip_min": int(counts.min()) if m else 0,
            "captions_per_clip_max": int(counts.max()) if m else 0,
        },
        "tie_rule": M.TIE_RULE,
        "definitions": {
            "t2a_mAP@10": "mean over captions of 1/rank if rank <= 10 else 0",
            "t2a_R@k": "fraction of captions whose clip ranks <= k",
            "a2t_mAP@10": "mean over clips of (sum of P@r over its captions at rank r <= 10)"
            " / #captions",
            "a2t_R@k": "fraction of clips with any caption ranked <= k",
            "medR": "median rank (a2t: of the best caption); midpoint for even counts",
        },
        "extra": dict(extra or {}),
    }
    text = json.dumps(_jsonable(report), indent=2) + "\n"

    paths = {
        "metrics": out / "metrics.json",
        "scores": out / "scores.npz",
        "submission": out / "submission_t2a.csv",
    }
    atomic_write(paths["metrics"], lambda f: f.write(text), binary=False)

    # Plain unicode arrays (no object dtype): np.load works without allow_pickle.
    arrays = {
        "scores": s,
        "captions": np.array(list(captions), dtype=np.str_),
        "clip_names": np.array(list(clip_names), dtype=np.str_),
        "caption_clip": cc.astype(np.int64),
    }
    # np.savez to a file object does not append ".npz" to the temp name.
    atomic_write(paths["scores"], lambda f: np.savez(f, **arrays), binary=True)

    # Same tie rule as the ranks, so the true clip sits at column `rank` of its row.
    top = M.topk(torch.from_numpy(s), SUBMISSION_K).numpy()
    k = top.shape[1]

    def write_csv(f: io.TextIOBase) -> None:
        w = csv.writer(f, lineterminator="\n")  # default QUOTE_MINIMAL quotes commas/quotes
        w.writerow(["caption", *(f"fname_{i}" for i in range(1, k + 1))])
        for cap, row in zip(captions, top):
            w.writerow([cap, *(clip_names[j] for j in row)])

    atomic_write(paths["submission"], write_csv, binary=False)
    return paths


def write_submission_2025(path: str | os.PathLike, scores: Tensor, captions: Sequence[str],
                          clip_names: Sequence[str]) -> Path:
    """DCASE 2025 task 6 predictions: the full score matrix, as the baseline's ``d25_t6/predict.py``
    writes it (CPJKU/dcase2025_task6_baseline @ c78422fc): header ``index,<clip 1>,...,<clip M>``
    (clip file names), one row per distinct query (first occurrence; the baseline keys a dict by the
    query text) holding its score for every clip. ``%.9g`` keeps float32 scores exact, so no ties are
    made by rounding. The task page's own format text could not be read here: this follows the
    baseline's code (its example file, resources/example_predictions.csv, is not in the snapshot read).
    """
    s = scores.detach().to("cpu", torch.float32).numpy()
    if s.shape != (len(captions), len(clip_names)):
        raise ValueError(f"scores {s.shape} need {len(captions)} captions x {len(clip_names)} clips")
    first: dict[str, int] = {}
    for i, c in enumerate(captions):
        first.setdefault(c, i)

    def write_csv(f: io.TextIOBase) -> None:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["index", *clip_names])
        for cap, i in first.items():
            w.writerow([cap, *(f"{v:.9g}" for v in s[i].tolist())])

    out = Path(path)
    atomic_write(out, write_csv, binary=False)
    return out


def recompute_from_npz(path: str | os.PathLike, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Load a scores.npz written by `write_results` and recompute `retrieval_metrics`."""
    with np.load(path, allow_pickle=False) as z:
        scores = torch.from_numpy(z["scores"])
        caption_clip = torch.from_numpy(z["caption_clip"])
    return M.retrieval_metrics(scores, caption_clip, ks)


# ---------------------------------------------------------------------------- table
def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _rank(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def format_table(
    metrics: Mapping[str, float],
    chance: Mapping[str, float],
    ci: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """Fixed-width table of mAP@10 and R@k in %, chance beside each value, CI on a second line.

    Example (Clotho-sized, 1,045 clips x 5 captions):
              mAP@10                R@1                   R@5                   R@10
        t2a   32.53 (chance 0.28)   23.58 (chance 0.10)   44.96 (chance 0.48)   54.56 (chance 0.96)
              CI [31.45, 33.58]     CI [22.43, 24.75]     CI [43.62, 46.30]     CI [53.19, 55.79]
        a2t   20.84 (chance 0.06)   49.00 (chance 0.10)   78.18 (chance 0.48)   87.46 (chance 0.95)
              CI [19.82, 21.93]     CI [46.12, 51.77]     CI [75.79, 80.48]     CI [85.36, 89.47]
        ranks: t2a medR 8 CI [7, 9] (chance 523);  a2t medR 2 CI [1, 2] (chance 677);  ...
        values in %; CI = percentile bootstrap over queries
    """
    cols = ["mAP@10", "R@1", "R@5", "R@10"]
    # R@k for ks other than 1/5/10, if the caller asked for them.
    more = {k.split("_", 1)[1] for k in metrics if "_R@" in k} - set(cols)
    cols += sorted(more, key=lambda c: int(c[2:]))
    rows: list[list[str]] = [["", *cols]]
    for d in ("t2a", "a2t"):
        if not any(f"{d}_{c}" in metrics for c in cols):
            continue
        cells = [f"{_pct(metrics.get(f'{d}_{c}'))} (chance {_pct(chance.get(f'{d}_{c}'))})" for c in cols]
        rows.append([d, *cells])
        if ci:
            cells = []
            for c in cols:
                lo_hi = ci.get(f"{d}_{c}")
                cells.append(f"CI [{_pct(lo_hi[0])}, {_pct(lo_hi[1])}]" if lo_hi else "")
            rows.append(["", *cells])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]

    def ci_rank(key: str) -> str:
        if not ci or key not in ci:
            return ""
        lo, hi = ci[key]
        return f" CI [{_rank(lo)}, {_rank(hi)}]"

    med = []
    for key in ("t2a_medR", "a2t_medR", "t2a_meanR"):
        if key in metrics:
            label = key.replace("_", " ")
            med.append(f"{label} {_rank(metrics[key])}{ci_rank(key)} (chance {_rank(chance.get(key))})")
    if med:
        lines.append("ranks: " + ";  ".join(med))
    lines.append("values in %; CI = percentile bootstrap over queries" if ci else "values in %")
    return "\n".join(lines)
