"""``MomentRetrieval``: the LightningModule of moment retrieval, and its CLI (``coattn fit/test`` with a
``data_modules.MomentDataModule`` config: coattn/cli.py sends such configs here).

    coattn synth-moments BANK data/moments --seconds 60
    coattn fit  --config experiments/moments/synth.yaml
    coattn test --config experiments/moments/synth.yaml --ckpt_path runs/moments/checkpoints/best.ckpt

Training batches are (query, crop) pairs (data_modules/moments.py). Loss per step:

    L = moment_loss(head on YN of the B diagonal pairs)                       (coattn/moments/head.py)
      + contrastive_weight * [ NT-Xent(s_pair) + NT-Xent(s_dual) ] / 2        over the crops that hold a window

Evaluation batches are whole recordings: the model indexes each once and localises all its queries;
the dual branch's sliding spans are scored in the same pass (the baseline row). ``test`` writes
``results/test/metrics.json`` (``moment/*`` and ``baseline_dual_sliding/moment/*``) and
``results/test/predictions.jsonl`` (Lighthouse's submission layout: qid, query, vid, pred_relevant_windows).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn

from coattn.coattention import CoAttentionCascade
from coattn.errors import UserFacingError
from coattn.io import atomic_write_text
from coattn.loss import nt_xent
from coattn.model import CoAttnModel
from coattn.moments.head import frame_targets, moment_loss
from coattn.moments.metrics import moment_metrics
from coattn.moments.model import MomentModel

BASELINE = "baseline_dual_sliding/"


class MomentRetrieval(pl.LightningModule):
    """CoAttnModel (iterating cascade) + moment head, trained on (query, crop) pairs, tested on recordings.

    Args: the towers and cascade (as CoAttnModel), embed_dim, feature_norm, temperature; hidden (head MLP
    width, default the cascade's); nms_iou, top_k (windows kept per query); dual_spans (seconds of the
    baseline's sliding spans); lr, weight_decay; contrastive_weight, offset_weight (loss terms above).
    """

    def __init__(self, audio_encoder: nn.Module, text_encoder: nn.Module, cascade: CoAttentionCascade,
                 embed_dim: int = 512, feature_norm: bool = False, temperature: float = 0.07,
                 hidden: int | None = None, nms_iou: float = 0.7, top_k: int = 10,
                 dual_spans: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0), lr: float = 1e-3, weight_decay: float = 0.01,
                 contrastive_weight: float = 1.0, offset_weight: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        model = CoAttnModel(audio_encoder, text_encoder, cascade, embed_dim=embed_dim, temperature=temperature,
                            feature_norm=feature_norm)
        self.mm = MomentModel(model, hidden, nms_iou, top_k, tuple(dual_spans))
        self.lr, self.weight_decay = lr, weight_decay
        self.contrastive_weight, self.offset_weight = contrastive_weight, offset_weight
        self._eval: dict[str, list] = {}

    # ---- tokenizer of a per-run text tower -----------------------------------------------------
    def setup(self, stage: str) -> None:
        enc = self.mm.model.text_encoder
        if getattr(enc, "needs_tokenizer_fit", False) and stage == "fit":
            enc.fit_tokenizer([q.query for q in self.trainer.datamodule.queries("train")])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = getattr(self.mm.model.text_encoder, "tokenizer_state", lambda: None)()
        if state is not None:
            checkpoint["tokenizer_state"] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("tokenizer_state") is not None:
            self.mm.model.text_encoder.load_tokenizer_state(checkpoint["tokenizer_state"])

    # ---- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        m, b = self.mm.model, len(batch["queries"])
        audio, text = m.encode_audio(batch["audio"]), m.encode_text(batch["queries"])
        idx = torch.arange(b, device=self.device)
        logits, offsets = self.mm.pair_outputs(audio, text, idx, idx[:, None])
        fs = self.mm.frame_seconds
        labels, target = frame_targets(batch["windows"], logits.shape[-1], fs)
        parts = moment_loss(logits, offsets, labels, target, fs, self.mm.clip_samples / self.mm.sample_rate,
                            self.offset_weight)
        loss = parts["loss"]
        pos = (batch["windows"][..., 0] >= 0).any(1).nonzero().squeeze(1)
        if self.contrastive_weight and len(pos) >= 2:  # clip level: a crop that holds the query is its match
            sub = lambda f: type(f)(f.states[pos], f.mask[pos], f.pooled[pos])  # noqa: E731
            a, t = sub(audio), sub(text)
            ids = torch.arange(len(pos), device=self.device)
            pair = m.score_grid(m.prepare_text(t), m.prepare_audio(a)) * m.pair_temperature.scale
            dual = m.dual_scores(a, t) * m.dual_temperature.scale
            parts["contrastive"] = 0.5 * (nt_xent(pair, ids, ids) + nt_xent(dual, ids, ids))
            loss = loss + self.contrastive_weight * parts["contrastive"]
        for k, v in parts.items():
            self.log(f"train/{k}", v.detach(), batch_size=b, prog_bar=k == "loss")
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                 weight_decay=self.weight_decay)

    # ---- evaluation: one recording per batch -------------------------------------------------
    def _eval_step(self, batch: dict, stage: str) -> None:
        index = self.mm.index(batch["audio"].to(self.device))
        acc = self._eval.setdefault(stage, [])
        for q in batch["queries"]:
            acc.append((q, self.mm.localize(index, q.query).tolist(), self.mm.dual_sliding(index, q.query).tolist()))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _finish(self, stage: str) -> dict[str, float]:
        acc = self._eval.pop(stage, [])
        if not acc:
            return {}
        gt = [[list(w) for w in q.windows] for q, _, _ in acc]
        metrics = moment_metrics([p for _, p, _ in acc], gt)
        metrics.update(moment_metrics([d for _, _, d in acc], gt, prefix=BASELINE + "moment/"))
        for k, v in metrics.items():
            self.log(f"{stage}/{k}", v, batch_size=len(acc))
        return metrics | {"_predictions": acc}

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        out = self._finish("test")
        if not out or self.trainer.sanity_checking:
            return
        acc = out.pop("_predictions")
        folder = Path(self.trainer.default_root_dir) / "results" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        report = {"metrics": out, "metric_definitions": "Moment-DETR standalone_eval (coattn/moments/metrics.py); "
                  "fractions in [0, 1]", "queries": len(acc)}
        atomic_write_text(folder / "metrics.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(folder / "predictions.jsonl", "".join(
            json.dumps({"qid": q.qid, "query": q.query, "vid": q.vid, "pred_relevant_windows": p}) + "\n"
            for q, p, _ in acc))
        print(format_table(out))


def format_table(metrics: dict[str, float]) -> str:
    keys = ("R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP@0.5:0.95")
    rows = [("moment head (co-attention)", "moment/"), ("dual encoder, sliding spans", BASELINE + "moment/")]
    lines = ["| system | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, prefix in rows:
        lines.append(f"| {name} | " + " | ".join(f"{100 * metrics[prefix + k]:.2f}" for k in keys) + " |")
    return "\n".join(lines)


def build_moment_model(hparams: dict[str, Any]) -> MomentModel:
    """The MomentModel of a checkpoint's hyper-parameters (class_path + init_args), weights not loaded."""
    from coattn.model import build_component

    comps = {n: build_component(hparams[n], b) for n, b in
             (("audio_encoder", nn.Module), ("text_encoder", nn.Module), ("cascade", CoAttentionCascade))}
    model = CoAttnModel(**comps, embed_dim=hparams.get("embed_dim", 512), temperature=hparams.get("temperature", 0.07),
                        feature_norm=hparams.get("feature_norm", False))
    return MomentModel(model, hparams.get("hidden"), hparams.get("nms_iou", 0.7), hparams.get("top_k", 10),
                       tuple(hparams.get("dual_spans", (1.0, 2.0, 4.0, 8.0))))


def run(args: list[str]) -> int:
    """``coattn fit/validate/test`` on a moment config; one-line errors as the retrieval CLI."""
    from data_modules.moments import MomentDataModule

    try:
        LightningCLI(MomentRetrieval, MomentDataModule, subclass_mode_data=True, args=args,
                     save_config_kwargs={"overwrite": True})
    except UserFacingError as exc:
        if os.environ.get("COATTN_DEBUG"):
            raise
        print(f"coattn: error: {exc}", file=sys.stderr)
        return 1
    return 0
