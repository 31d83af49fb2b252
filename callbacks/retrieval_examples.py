"""``RetrievalExamples``: what the model retrieves for a few fixed text queries, every evaluation.

For each query: the top ``top_k`` clips with their scores, hit (the query's own clip) or miss,
and the rank of the true clip. Logged as a W&B table (``<stage>/retrieval_examples``) with
``wandb.Audio`` players, and/or written to ``<run dir>/retrieval_examples/<stage>_epoch<NNN>.{json,md}``
(by default: files when no WandbLogger is set).

It reads the score matrix the module computed (``CoAttnRetrieval.last_evaluation``, a
``coattn.results.EvaluationResult``: stage, scores, captions, fnames, caption_clip) in
``on_validation_end`` / ``on_test_end``, which run after the module's epoch-end hook, so it costs
no extra scoring. Queries are captions of the evaluated
split: ``queries`` (exact caption texts; unknown ones are warned about and skipped) or, by
default, the first ``num_queries`` captions (distinct clips) of the split.

YAML::

    - class_path: callbacks.RetrievalExamples
      init_args: {num_queries: 4, top_k: 5, every_n_epochs: 1}
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from callbacks.common import due, run_dir, taken_steps, wandb_loggers, want_files
from coattn.metrics import topk
from coattn.results import EvaluationResult

log = logging.getLogger(__name__)


class RetrievalExamples(Callback):
    """Args:
        queries: caption texts to follow (must be captions of the evaluated split).
        num_queries: without ``queries``: the first caption of each of the first N clips.
        top_k: clips shown per query.
        every_n_epochs: during fit, log every n-th validation (and the last).
        stages: "val" and/or "test".
        log_audio: attach ``wandb.Audio`` players (read with ``coattn.audio``).
        audio_sample_rate: rate of the attached audio (smaller files than the model's 48 kHz).
        max_audio_seconds: attached audio is cut to this length.
        write_files: JSON + markdown in the run folder: True, False, or None = only without W&B.
    """

    def __init__(self, queries: list[str] | None = None, num_queries: int = 3, top_k: int = 5,
                 every_n_epochs: int = 1, stages: list[str] | None = None, log_audio: bool = True,
                 audio_sample_rate: int = 16000, max_audio_seconds: float = 10.0, write_files: bool | None = None):
        self.queries, self.num_queries, self.top_k = queries, num_queries, top_k
        self.every_n_epochs, self.stages = every_n_epochs, list(stages or ["val", "test"])
        self.log_audio, self.audio_sample_rate, self.max_audio_seconds = log_audio, audio_sample_rate, max_audio_seconds
        self.write_files = write_files

    # ---- hooks -------------------------------------------------------------------------------
    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and due(trainer, self.every_n_epochs):
            self._report(trainer, pl_module, "val")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    # ---- the examples --------------------------------------------------------------------------
    def query_indices(self, captions: list[str], caption_clip: torch.Tensor) -> list[int]:
        if self.queries:
            first = {}
            for i, c in enumerate(captions):
                first.setdefault(c, i)
            missing = [q for q in self.queries if q not in first]
            if missing:
                log.warning("RetrievalExamples: %d queries are not captions of this split, skipped: %s",
                            len(missing), missing[:3])
            return [first[q] for q in self.queries if q in first]
        out, seen = [], set()
        for i, clip in enumerate(caption_clip.tolist()):
            if clip not in seen:
                seen.add(clip)
                out.append(i)
            if len(out) >= self.num_queries:
                break
        return out

    def examples(self, ev: EvaluationResult) -> list[dict]:
        scores, captions, fnames, caption_clip = ev["scores"], ev["captions"], ev["fnames"], ev["caption_clip"]
        rows = []
        for qi in self.query_indices(captions, caption_clip):
            s = scores[qi]
            order = topk(s[None], len(s))[0]  # ties: lower index first, as the metrics
            true = int(caption_clip[qi])
            true_rank = int((order == true).nonzero()[0, 0]) + 1
            top = [{"rank": r + 1, "fname": fnames[j], "score": float(s[j]), "hit": j == true}
                   for r, j in enumerate(order[: self.top_k].tolist())]
            rows.append({"query": captions[qi], "true_fname": fnames[true], "true_rank": true_rank, "top": top})
        return rows

    def _report(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        ev: EvaluationResult | None = getattr(pl_module, "last_evaluation", None)  # any module may host this
        if stage not in self.stages or not trainer.is_global_zero or ev is None or ev.stage != stage:
            return
        rows = self.examples(ev)
        if not rows:
            return
        epoch = trainer.current_epoch
        if want_files(trainer, self.write_files):
            self._write_files(run_dir(trainer) / "retrieval_examples", f"{stage}_epoch{epoch:03d}", rows, stage, epoch)
        loggers = wandb_loggers(trainer)
        if loggers:
            table = self._table(trainer, rows, stage, epoch)
            for lg in loggers:
                lg.log_metrics({f"{stage}/retrieval_examples": table}, step=taken_steps(trainer))

    def _write_files(self, out: Path, stem: str, rows: list[dict], stage: str, epoch: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps({"stage": stage, "epoch": epoch, "queries": rows}, indent=2)
                                          + "\n", encoding="utf-8")
        lines = [f"# Retrieval examples: {stage}, epoch {epoch}", ""]
        for q in rows:
            lines += [f"## \"{q['query']}\"", "", f"true clip `{q['true_fname']}` at rank {q['true_rank']}", "",
                      "| rank | clip | score | hit |", "|---:|---|---:|:---:|"]
            lines += [f"| {t['rank']} | `{t['fname']}` | {t['score']:.4f} | {'hit' if t['hit'] else 'miss'} |"
                      for t in q["top"]]
            lines.append("")
        (out / f"{stem}.md").write_text("\n".join(lines), encoding="utf-8")

    def _audio(self, trainer: Trainer, stage: str):
        """fname -> audio file path of the evaluated split ({} when the data module has no splits)."""
        dm = trainer.datamodule
        try:
            split = dm.split(stage)
        except Exception:  # a data module without splits: a table without players
            return {}
        return dict(zip(split.fnames, split.paths))

    def _table(self, trainer: Trainer, rows: list[dict], stage: str, epoch: int):
        import wandb

        from coattn.audio import load_audio

        paths = self._audio(trainer, stage) if self.log_audio else {}
        cache: dict[str, object] = {}

        def player(fname: str):
            if fname not in paths:
                return None
            if fname not in cache:
                try:
                    wave = load_audio(paths[fname], self.audio_sample_rate)
                    wave = wave[: int(self.max_audio_seconds * self.audio_sample_rate)]
                    cache[fname] = wandb.Audio(wave.numpy(), sample_rate=self.audio_sample_rate, caption=fname)
                except Exception as exc:
                    log.warning("RetrievalExamples: no audio for %s: %s", fname, exc)
                    cache[fname] = None
            return cache[fname]

        columns = ["epoch", "query", "rank", "clip", "score", "hit", "true_clip", "true_rank", "audio"]
        data = [[epoch, q["query"], t["rank"], t["fname"], round(t["score"], 5), t["hit"], q["true_fname"],
                 q["true_rank"], player(t["fname"])] for q in rows for t in q["top"]]
        return wandb.Table(columns=columns, data=data)
