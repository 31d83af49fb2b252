"""Evaluation in the app: the ``model.evaluation`` settings, the one accumulator that validation,
test and predict share (one part per dataloader), and the files ``test`` and ``predict`` write.

    coattn test    --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
    coattn predict --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt

Every clip and every caption of a split is encoded once (``EvalAccumulator.add``, per batch); at
the end of the epoch the features are gathered over ranks (sampler repeats removed, clip order:
``coattn.distributed.gather_eval``) and each caption is mapped to the row of its clip. Then:

    validate / test   the ``Retriever`` scores all captions x all clips (DDP: each rank a slice of the
                      captions, gathered: the one-process matrix bit for bit); metrics (and the dual
                      branch's own mAP@10) are logged; ``test`` prints the table and writes
                      ``metrics.json``, ``scores.npz``, ``submission_t2a.csv`` and the DCASE 2025
                      ``submission_dcase2025.csv`` (coattn/results.py). Several loaders (data
                      ``MultiDataModule``): each is scored alone and logged as ``<stage>/<name>/...``
                      (``eval_loaders``), its files in ``<results>/<name>/``. A split with a
                      multi-relevance file (data ``relevance_files``) also gets ``multi_mAP@16``...
                      (coattn/relevance.py)
    predict           ``embeddings.npz``: clip_embeddings (M, E), caption_embeddings (N, E) (float32,
                      L2-normalised dual vectors: cosine = dot product = s_dual), fnames (M,),
                      captions (N,), caption_clip (N,) = row of each caption's clip, clip_index (M,);
                      ``features.npz``: the encoder outputs the co-attention stage starts from:
                      clip_states (M, T, Da), clip_mask, clip_pooled, caption_states (N, L, Dt),
                      caption_mask, caption_pooled; same order as embeddings.npz

Files go to ``evaluation.results_dir`` or ``<default_root_dir>/results/<stage>``; rank 0 writes.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from coattn.batch import Batch
from coattn.distributed import gather_eval
from coattn.errors import ConfigError, OutputError
from coattn.features import SequenceFeatures
from coattn.io import atomic_write_bytes
from coattn.retrieval import Retriever

log = logging.getLogger(__name__)

FUSION_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # lambdas tried by fusion: auto (ties: the smallest)


@dataclass
class Evaluation(Retriever):
    """How validation and test score a split and what ``test`` writes (the ``model.evaluation`` group).

    The command line always sets these: a ``--ckpt_path`` checkpoint never overrides them.

    Args:
        mode: ``exact`` (the cascade scores every caption x clip pair) or ``rerank`` (two-stage: the
            dual encoder shortlists the ``rerank_k`` best clips per caption and captions per clip, the
            cascade re-scores that union; the rest ranks below, in dual order: coattn/retrieval/rerank.py).
            metrics.json records the mode, K and the cascade passes. Ignored for cascade ``none``.
        rerank_k: shortlist length K of ``rerank``.
        tile_pairs: caption-clip pairs per cascade pass (the memory bound of scoring).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``fp32``, ``bf16`` or ``fp16``.
        bootstrap: bootstrap resamples for the 95 % confidence intervals (0 = none).
        results_dir: where ``test`` and ``predict`` write; default ``<default_root_dir>/results/<stage>``.
        fusion: the system's score is ``s_pair + lambda * s_dual``: a fixed lambda (0 = the pair score
            alone), ``auto`` (every validation picks the lambda of ``FUSION_GRID`` with the best
            t2a mAP@10 and stores it in the model, which test, search and export then use) or null
            (the model's stored lambda). metrics.json records the lambda and the pair-only metrics.
    """

    bootstrap: int = 1000
    results_dir: str | None = None
    fusion: float | Literal["auto"] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.fusion, str) and self.fusion != "auto":
            raise ConfigError(f"model.evaluation.fusion must be a number >= 0, 'auto' or null, got {self.fusion!r}")
        if self.bootstrap < 0:
            raise ConfigError(f"model.evaluation.bootstrap must be >= 0 (0: no confidence intervals), "
                              f"got {self.bootstrap}")

    def output_dir(self, default_root_dir: str | Path, stage: str) -> Path:
        return Path(self.results_dir or Path(default_root_dir) / "results" / stage)


@dataclass
class Collected:
    """A whole split, encoded: clips in clip order, captions with the row of their clip."""

    audio: SequenceFeatures
    text: SequenceFeatures
    clip_index: torch.Tensor  # (M,) index of each clip in its split
    caption_clip: torch.Tensor  # (N,) row of each caption's clip in ``audio``
    fnames: list[str]
    captions: list[str]


class EvalAccumulator:
    """Encoder outputs of every batch of an evaluation epoch, per dataloader index (module docstring)."""

    def __init__(self):
        self._parts: dict[int, dict[str, list]] = {}

    def __bool__(self) -> bool:
        return any(self._parts.values())

    def loaders(self) -> list[int]:
        return sorted(self._parts)

    def add(self, batch: Batch, audio: SequenceFeatures, text: SequenceFeatures, loader: int = 0) -> None:
        p = self._parts.setdefault(loader, {})
        p.setdefault("audio", []).append(audio)
        p.setdefault("text", []).append(text)
        p.setdefault("clip_index", []).append(batch.clip_index)
        p.setdefault("caption_clip", []).append(batch.caption_clip)
        p.setdefault("fnames", []).extend(batch.fnames)
        p.setdefault("captions", []).extend(batch.captions)

    def finish(self, loader: int = 0) -> Collected | None:
        """Gather over ranks, concatenate, map captions to clip rows; empties that loader's part."""
        parts = self._parts.pop(loader, None)
        if not parts:
            return None
        parts = gather_eval(parts)  # DDP: every rank's items, sampler repeats removed, clip order
        clip_index = torch.cat(parts["clip_index"])
        # caption_clip holds split-wide clip indices; map them to rows of the gathered clips.
        row_of = torch.full((int(clip_index.max()) + 1,), -1, dtype=torch.long, device=clip_index.device)
        row_of[clip_index] = torch.arange(len(clip_index), device=clip_index.device)
        return Collected(SequenceFeatures.cat(parts["audio"]), SequenceFeatures.cat(parts["text"]), clip_index,
                         row_of[torch.cat(parts["caption_clip"])], list(parts["fnames"]), list(parts["captions"]))


def eval_loaders(trainer, stage: str, collected: EvalAccumulator) -> list[tuple[int, str | None]]:
    """(dataloader index, dataset name or None) of each loader to score; the name prefixes its metrics
    (``val/<name>/t2a_mAP@10``). Names come from the data module (``eval_names``); unnamed extra loaders
    are called by their index."""
    dm = getattr(trainer, "datamodule", None)
    names = list(dm.eval_names(stage)) if hasattr(dm, "eval_names") else []
    if names:
        return list(enumerate(names))
    return [(i, str(i) if i else None) for i in (collected.loaders() or [0])]


def probe_metrics(trainer, stage: str, c: Collected, model, fusion: float) -> dict:
    """The compositional probe of a test split whose data holds probe variants (``coattn synth`` writes
    them to ``<root>/synth_metadata.json``), else {} (coattn/probe.py; ``coattn probe`` for any split)."""
    dm = getattr(trainer, "datamodule", None)
    meta = Path(getattr(dm, "root", "")) / "synth_metadata.json" if getattr(dm, "root", None) else None
    if stage != "test" or meta is None or not meta.is_file() or trainer.sanity_checking:
        return {}
    from coattn.probe import items_from_metadata, run_probe

    folder = dm.split("test").audio_dir.name
    items = items_from_metadata(meta, folder, c.fnames, c.captions, c.caption_clip.tolist())
    return run_probe(model, c.audio, items, fusion)


def twin_metrics(trainer, stage: str, c: Collected, branches: dict[str, dict]) -> dict:
    """t2a metrics of the queries whose clip has an order twin in the test split and of the others, per
    branch ({"fused"|"pair"|"dual": {"twin": {...}, "other": {...}}}), when the split's metadata records
    twins (``coattn synth --sounds``), else {}. ``branches``: per-query metric vectors of each score."""
    dm = getattr(trainer, "datamodule", None)
    meta = Path(getattr(dm, "root", "")) / "synth_metadata.json" if getattr(dm, "root", None) else None
    if stage != "test" or meta is None or not meta.is_file() or trainer.sanity_checking:
        return {}
    from coattn.probe import subset_metrics, twin_clips

    twins = twin_clips(meta, dm.split("test").audio_dir.name, c.fnames)
    if twins is None:
        return {}
    groups = {"twin": twins, "other": ~twins}
    return {branch: subset_metrics(pq, c.caption_clip, groups) for branch, pq in branches.items()}


def relevance_metrics(trainer, stage: str, loader: int, c: Collected,
                      scores: torch.Tensor) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """DCASE 2025 multi-relevance metrics of a scored split when its data module names a relevance file
    (``relevance_files``), else ({}, {})."""
    dm = getattr(trainer, "datamodule", None)
    spec = dm.relevance(stage, loader) if hasattr(dm, "relevance") else None
    if spec is None or trainer.sanity_checking:  # the sanity check scores a few batches, not the split
        return {}, {}
    from coattn.relevance import multi_relevance_metrics
    return multi_relevance_metrics(scores, c.captions, c.fnames, *spec)


def write_test_results(out: Path, c: Collected, scores: torch.Tensor, metrics: dict, per_query: dict,
                       bootstrap: int, extra: dict, multi: tuple[dict, dict] = ({}, {})) -> None:
    """Print the metrics table (first: a failed write never loses it), then write the result files;
    ``multi``: the multi-relevance (metrics, per-query vectors) of ``relevance_metrics``. If writing
    fails, the metrics are printed as JSON too and ``OutputError`` names the folder."""
    from coattn.metrics import bootstrap_ci, chance_metrics
    from coattn.results import format_table, write_results, write_submission_2025

    n_per_clip = torch.bincount(c.caption_clip, minlength=len(c.fnames))
    chance = chance_metrics(c.caption_clip, len(c.fnames))
    ci = bootstrap_ci(per_query, n_boot=bootstrap) if bootstrap else {}
    extra = {**extra, "n_captions": len(c.captions), "n_clips": len(c.fnames),
             "captions_per_clip": sorted(set(n_per_clip.tolist()))}
    print(format_table(metrics, chance, ci))
    if extra.get("probe"):
        from coattn.probe import format_probe
        print(format_probe(extra["probe"]))
    if extra.get("subsets"):
        from coattn.probe import format_subsets
        print(format_subsets(extra["subsets"]))
    if multi[0]:
        multi_ci = bootstrap_ci(multi[1], n_boot=bootstrap) if bootstrap else {}
        extra["multi_relevance"] = {"metrics": multi[0], "ci": multi_ci}
        print(_multi_line(multi[0], multi_ci))
    if extra.get("retrieval_mode") == "rerank":
        print(f"retrieval: rerank, K={extra['rerank_k']}: {extra['cascade_passes']:,} cascade passes "
              f"({100 * extra['cascade_cost_fraction']:.1f} % of exact)")
    try:
        paths = write_results(out, scores.cpu(), c.caption_clip.cpu(), c.captions, c.fnames, metrics, ci, chance, extra)
        paths["submission_2025"] = write_submission_2025(out / "submission_dcase2025.csv", scores, c.captions, c.fnames)
    except OSError as exc:  # a full disk or a folder gone read-only: keep the numbers, say where it failed
        print(json.dumps({"metrics": metrics, "ci": ci, "chance": chance}, default=float))
        raise OutputError(f"could not write the test results to {out} ({exc.strerror or exc}); the metrics are "
                          "printed above (table and JSON)") from exc
    print(f"results written to {out}: " + ", ".join(p.name for p in paths.values()))


def _multi_line(metrics: dict[str, float], ci: dict[str, tuple[float, float]]) -> str:
    """'DCASE 2025 multi-relevance (1037 queries): mAP@16 40.12 CI [38.9, 41.3], ...' (values in %)."""
    cells = []
    for k, v in metrics.items():
        if k != "multi_queries":
            lo_hi = f" CI [{100 * ci[k][0]:.2f}, {100 * ci[k][1]:.2f}]" if k in ci else ""
            cells.append(f"{k.removeprefix('multi_')} {100 * v:.2f}{lo_hi}")
    return f"DCASE 2025 multi-relevance ({int(metrics['multi_queries'])} queries, values in %): " + ", ".join(cells)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@torch.no_grad()
def write_predictions(out: Path, c: Collected, model) -> dict[str, Path]:
    """``embeddings.npz`` and ``features.npz`` of a collected split (module docstring)."""
    np_ = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    paths = {"embeddings": out / "embeddings.npz", "features": out / "features.npz"}
    atomic_write_bytes(paths["embeddings"], _npz_bytes({
        "clip_embeddings": np_(model.dual_embed_audio(c.audio)),
        "caption_embeddings": np_(model.dual_embed_text(c.text)),
        "fnames": np.array(c.fnames, dtype=str), "captions": np.array(c.captions, dtype=str),
        "caption_clip": c.caption_clip.cpu().numpy(), "clip_index": c.clip_index.cpu().numpy()}))
    atomic_write_bytes(paths["features"], _npz_bytes({
        "clip_states": np_(c.audio.states), "clip_mask": c.audio.mask.cpu().numpy(), "clip_pooled": np_(c.audio.pooled),
        "caption_states": np_(c.text.states), "caption_mask": c.text.mask.cpu().numpy(),
        "caption_pooled": np_(c.text.pooled)}))
    print(f"predictions written to {out}: {len(c.fnames)} clips, {len(c.captions)} captions "
          "(embeddings.npz, features.npz)")
    return paths
