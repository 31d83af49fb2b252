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
from coattn.train.warm_start import hold_frozen

BASELINE = "baseline_dual_sliding/"


class MomentRetrieval(pl.LightningModule):
    """CoAttnModel (iterating cascade) + moment head, trained on (query, crop) pairs, tested on recordings.

    Args: the towers and cascade (as CoAttnModel), embed_dim, feature_norm, temperature, dual_pooling,
    dual_projection; hidden (head MLP width, default the stream's); nms_iou, top_k (windows kept per query);
    dual_spans (seconds of the baseline's sliding spans); lr, weight_decay; contrastive_weight, offset_weight
    (loss terms above). Pretrained regime (docs/moments.md):

        stream        cascade (the co-attention head) | dual (FiLM of the tower frames by the query's pooled
                      vector, no co-attention; width stream_width): what co-attention adds
        index_hop     seconds between the sliding tower's crops (None: half its input)
        feature_cache folder: frozen towers run once per recording (its stitched index) and per query
                      (coattn/moments/cache.py); training crops are slices of the index
        init_from     a ``coattn fit`` checkpoint (clip retrieval, e.g. experiments/real/dual.yaml): its
                      ``model.*`` weights that fit are loaded (the dual heads at least)
        freeze_dual   keep the dual heads as loaded (no gradient, BatchNorm in eval): the baseline row is
                      then the zero-shot sliding-window dual encoder, never trained on moments
        decode        spans (every span up to max_window s scored by its summed relevance logits) | frames
                      (each frame's regressed boundaries, the first round's decoder)
        prior         dual: relevance logits start from the dual branch's frame similarity (prior_window s
                      pooled around each frame, scaled by a learnt factor initialised at prior_scale) | none
        context       seconds of index frames the cascade sees at once, in training crops and evaluation chunks
                      (None: the tower's window; longer needs feature_cache)
    """

    def __init__(self, audio_encoder: nn.Module, text_encoder: nn.Module, cascade: CoAttentionCascade,
                 embed_dim: int = 512, feature_norm: bool = False, temperature: float = 0.07,
                 dual_pooling: str = "mean", dual_projection: str = "linear",
                 hidden: int | None = None, nms_iou: float = 0.7, top_k: int = 10,
                 dual_spans: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0), lr: float = 1e-3, weight_decay: float = 0.01,
                 contrastive_weight: float = 1.0, offset_weight: float = 1.0, stream: str = "cascade",
                 stream_width: int = 256, index_hop: float | None = None, feature_cache: str | None = None,
                 init_from: str | None = None, freeze_dual: bool = False, decode: str = "spans",
                 max_window: float | None = None, prior: str = "none", prior_window: float = 1.0,
                 prior_scale: float = 10.0, context: float | None = None):
        super().__init__()
        self.save_hyperparameters()
        model = CoAttnModel(audio_encoder, text_encoder, cascade, embed_dim=embed_dim, temperature=temperature,
                            feature_norm=feature_norm, dual_pooling=dual_pooling, dual_projection=dual_projection)
        self.mm = MomentModel(model, hidden, nms_iou, top_k, tuple(dual_spans), stream, stream_width, index_hop,
                              decode, max_window, prior, prior_window, prior_scale, context)
        if context is not None and not feature_cache and self.mm.context_frames > self.mm.num_frames:
            raise UserFacingError(f"model.context {context} s is longer than the audio tower's window: training "
                                  "crops of that length are cut from the cached index, so set model.feature_cache "
                                  "(frozen towers), or leave model.context unset")
        self.lr, self.weight_decay = lr, weight_decay
        self.contrastive_weight, self.offset_weight = contrastive_weight, offset_weight
        self._eval: dict[str, list] = {}
        self.cache = None
        if feature_cache:
            frozen = [n for n in ("audio_encoder", "text_encoder") if getattr(getattr(model, n), "freeze", False)]
            if len(frozen) < 2:
                raise UserFacingError("model.feature_cache needs both towers frozen (init_args.freeze: true); "
                                      "unset feature_cache to train a tower")
            from coattn.audio import load_audio
            from coattn.moments.cache import IndexCache

            self.cache = IndexCache(feature_cache, self.mm, load_audio)
        if init_from:
            self.loaded = load_initial(self.mm.model, init_from)
        self.frozen_dual = [model.dual_audio, model.dual_text, model.dual_temperature] if freeze_dual else []
        hold_frozen(self.frozen_dual)

    def train(self, mode: bool = True):
        super().train(mode)
        hold_frozen(self.frozen_dual)  # BatchNorm statistics stay the loaded ones
        return self

    # ---- tokenizer of a per-run text tower -----------------------------------------------------
    def setup(self, stage: str) -> None:
        enc = self.mm.model.text_encoder
        dm = self.trainer.datamodule
        if getattr(enc, "needs_tokenizer_fit", False) and stage == "fit":
            enc.fit_tokenizer([q.query for q in dm.queries("train")])
        if self.cache is not None:  # batches carry paths and crop starts; the features come from the cache
            dm.set_load_audio(False)

    def _build_cache(self, splits: list[str]) -> None:
        """Every recording and query of ``splits`` into the cache, once (after a checkpoint's weights and
        tokenizer are restored: the cache keys hold the towers' identity and weights)."""
        dm = self.trainer.datamodule
        if self.cache is None or dm is None:
            return
        qs = [q for sp in splits if dm.files.get(sp) for q in dm.queries(sp)]
        before = dict(self.cache.stats)
        self.cache.build([q.audio for q in qs], [q.query for q in qs], progress=_progress)
        built = self.cache.stats["recordings_built"] - before["recordings_built"]
        print(f"feature cache {self.cache.root}: {built} recordings indexed, "
              f"{self.cache.stats['queries_built'] - before['queries_built']} queries encoded, "
              f"{self.cache.stats['build_seconds'] - before['build_seconds']:.1f} s ({len(qs)} queries read from it)",
              file=sys.stderr)

    def on_fit_start(self) -> None:
        self._build_cache(["train", "val"])

    def on_test_start(self) -> None:
        self._build_cache(["test"])

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
        windows = batch["windows"]
        if "paths" in batch:  # cached: crops of the indices; windows from recording to crop seconds
            n = self.mm.context_frames
            audio, t0 = self.cache.crops(batch["paths"], batch["starts"].tolist(), n)
            audio, text = audio.to(self.device), self.cache.text(batch["queries"]).to(self.device)
            windows = rebase_windows(windows, t0.to(windows.device), n * self.mm.frame_seconds)
        else:
            audio, text = m.encode_audio(batch["audio"]), m.encode_text(batch["queries"])
        idx = torch.arange(b, device=self.device)
        logits, offsets = self.mm.pair_outputs(audio, text, idx, idx[:, None])
        fs = self.mm.frame_seconds
        labels, target = frame_targets(windows, logits.shape[-1], fs)
        parts = moment_loss(logits, offsets, labels, target, fs, self.mm.clip_samples / self.mm.sample_rate,
                            self.offset_weight)
        loss = parts["loss"]
        pos = (windows[..., 0] >= 0).any(1).nonzero().squeeze(1)
        if self.contrastive_weight and len(pos) >= 2:  # clip level: a crop that holds the query is its match
            sub = lambda f: type(f)(f.states[pos], f.mask[pos], f.pooled[pos])  # noqa: E731
            a, t = sub(audio), sub(text)
            ids = torch.arange(len(pos), device=self.device)
            terms = []
            if m.has_pairwise and self.mm.stream == "cascade":
                terms.append(nt_xent(m.score_grid(m.prepare_text(t), m.prepare_audio(a)) * m.pair_temperature.scale,
                                     ids, ids))
            if not self.frozen_dual:
                terms.append(nt_xent(m.dual_scores(a, t) * m.dual_temperature.scale, ids, ids))
            if terms:
                parts["contrastive"] = sum(terms) / len(terms)
                loss = loss + self.contrastive_weight * parts["contrastive"]
        for k, v in parts.items():
            self.log(f"train/{k}", v.detach(), batch_size=b, prog_bar=k == "loss")
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                 weight_decay=self.weight_decay)

    # ---- evaluation: one recording per batch -------------------------------------------------
    def _eval_step(self, batch: dict, stage: str) -> None:
        acc = self._eval.setdefault(stage, [])
        if self.cache is not None:
            index = self.cache.index(batch["path"])
            index.frames = index.frames.to(self.device)
            texts = [self.cache.text([q.query]).to(self.device) for q in batch["queries"]]
        else:
            index = self.mm.index(batch["audio"].to(self.device))
            texts = [q.query for q in batch["queries"]]
        for q, t in zip(batch["queries"], texts):
            acc.append((q, self.mm.localize(index, t).tolist(), self.mm.dual_sliding(index, t).tolist()))

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
        report = {"metrics": out, "stream": self.mm.stream, "metric_definitions": "Moment-DETR standalone_eval (coattn/moments/metrics.py); "
                  "fractions in [0, 1]", "queries": len(acc)}
        atomic_write_text(folder / "metrics.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(folder / "predictions.jsonl", "".join(
            json.dumps({"qid": q.qid, "query": q.query, "vid": q.vid, "pred_relevant_windows": p}) + "\n"
            for q, p, _ in acc))
        print(format_table(out, self.mm.stream))


def rebase_windows(windows: torch.Tensor, t0: torch.Tensor, seconds: float) -> torch.Tensor:
    """Windows (B, K, 2) in recording seconds (start < 0: padding) -> seconds of crops starting at t0 (B,) and
    ``seconds`` long: clipped to the crop; windows outside it become padding (-1)."""
    s, e = windows[..., 0] - t0[:, None], windows[..., 1] - t0[:, None]
    keep = (windows[..., 0] >= 0) & (e > 0) & (s < seconds)
    out = torch.stack([s.clamp(min=0), e.clamp(max=seconds)], -1)
    return torch.where(keep[..., None], out, torch.full_like(out, -1.0))


def load_initial(model: CoAttnModel, path: str) -> list[str]:
    """Load the ``model.*`` weights of a ``coattn fit`` checkpoint that fit ``model`` (names and shapes);
    the dual heads must be among them. Returns the loaded names."""
    from coattn.io import load_checkpoint

    if not Path(path).is_file():
        raise UserFacingError(f"model.init_from {path}: no such checkpoint; give a `coattn fit` checkpoint (e.g. "
                              "runs/real_dual/checkpoints/best.ckpt of experiments/real/dual.yaml)")
    ckpt = load_checkpoint(path, map_location="cpu")
    own = model.state_dict()
    state = {k[len("model."):]: v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith("model.")}
    fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("dual_audio.") for k in fit) or not any(k.startswith("dual_text.") for k in fit):
        raise UserFacingError(f"model.init_from {path}: its dual heads do not fit this model (same towers, "
                              "embed_dim, dual_projection and feature_norm as the checkpoint's config?)")
    model.load_state_dict(fit, strict=False)
    return sorted(fit)


def _progress(done: int, total: int) -> None:
    if done == total or done % 25 == 0:
        print(f"feature cache: {done}/{total} recordings indexed", file=sys.stderr, flush=True)


def format_table(metrics: dict[str, float], stream: str = "cascade") -> str:
    keys = ("R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP@0.5:0.95")
    head = "moment head (co-attention)" if stream == "cascade" else "moment head (dual features, FiLM)"
    rows = [(head, "moment/"), ("dual encoder, sliding spans", BASELINE + "moment/")]
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
                        feature_norm=hparams.get("feature_norm", False),
                        dual_pooling=hparams.get("dual_pooling", "mean"),
                        dual_projection=hparams.get("dual_projection", "linear"))
    return MomentModel(model, hparams.get("hidden"), hparams.get("nms_iou", 0.7), hparams.get("top_k", 10),
                       tuple(hparams.get("dual_spans", (1.0, 2.0, 4.0, 8.0))), hparams.get("stream", "cascade"),
                       hparams.get("stream_width", 256), hparams.get("index_hop"),
                       hparams.get("decode", "frames"),  # checkpoints from before the key: their decoder
                       hparams.get("max_window"), hparams.get("prior", "none"), hparams.get("prior_window", 1.0),
                       hparams.get("prior_scale", 10.0), hparams.get("context"))


def run(args: list[str]) -> int:
    """``coattn fit/validate/test`` on a moment config; one-line errors as the retrieval CLI."""
    from data_modules.moments import MomentDataModule

    from coattn.train import quiet

    quiet.install()  # the Lightning notes coattn causes on purpose, as for clip retrieval
    try:  # argv itself goes in as None: Lightning warns when explicit args repeat the command line
        LightningCLI(MomentRetrieval, MomentDataModule, subclass_mode_data=True,
                     args=None if args == sys.argv[1:] else args, save_config_kwargs={"overwrite": True})
    except UserFacingError as exc:
        if os.environ.get("COATTN_DEBUG"):
            raise
        print(f"coattn: error: {exc}", file=sys.stderr)
        return 1
    return 0
