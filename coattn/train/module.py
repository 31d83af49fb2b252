"""``CoAttnRetrieval``: the LightningModule. It orchestrates (steps, logging, optimisers, evaluation
files); the computation lives in the library: ``CoAttnModel`` (encoders, cascade, heads), the
``RetrievalLoss`` and the ``Retriever``.

    coattn fit  --config experiments/demo.yaml
    coattn test --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt

Its configuration (the YAML's ``model:`` section) is the architecture, ``CoAttnModel``'s own
arguments at the top (``audio_encoder``, ``text_encoder``, ``cascade``, ``embed_dim``...), plus three
groups: ``loss`` (coattn.loss.RetrievalLoss), ``optim`` (coattn/train/optim.py) and ``evaluation``
(coattn/train/evaluation.py), and ``feature_cache``. With ``--ckpt_path`` the architecture comes
from the checkpoint; everything else from the command (coattn/train/cli.py).

Training step (B clips, B captions): encode each once, the loss scores all B x B pairs with the
cascade (+ the dual-encoder term). Validation/test: encode every clip and caption of the split
once, score all captions x all clips, compute the DCASE metrics; ``test`` also writes files.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from coattn.batch import Batch
from coattn.errors import UserFacingError
from coattn.distributed import global_batch_size, rank_world
from coattn.features import SequenceFeatures
from coattn.io import atomic_write_text, file_fingerprint
from coattn.loss import RetrievalLoss
from coattn.model import CoAttnModel
from coattn.results import EvaluationResult
from coattn.train.evaluation import (FUSION_GRID, EvalAccumulator, Evaluation, eval_loaders, probe_metrics,
                                     relevance_metrics, twin_metrics, write_predictions, write_test_results)
from coattn.train.optim import Optim
from coattn.train.warm_start import hold_frozen, warm_start

log = logging.getLogger(__name__)


class CoAttnRetrieval(pl.LightningModule):
    """Language-based audio retrieval with a co-attention cascade (module docstring).

    Args:
        loss: the training objective (``aux_weight``, ``pair_negatives``).
        optim: AdamW learning rates, weight decay, warm-up.
        evaluation: how validation/test score (``mode``, ``rerank_k``, ``tile_pairs``, ``precision``)
            and what test writes (``bootstrap``, ``results_dir``); never taken from a checkpoint.
        feature_cache: folder of the feature cache (coattn/train/feature_cache.py): frozen encoders
            run once per clip / caption and steps read their stored outputs. None = off.
        init_from: a ``coattn fit`` checkpoint whose towers (both encoders, the per-run tokenizer) and
            dual heads start this fit (warm start: stage 1 aligns the towers, e.g. a ``cascade: none``
            run; stage 2 learns co-attention on top). The cascade and the pair heads start fresh;
            freeze the towers with the encoders' ``freeze``. Applied when a fit starts (a resumed fit
            then restores its own checkpoint over it); ignored by validate/test/predict.
        init_pair_from_dual: when a fit starts (after ``init_from``), copy the dual heads into the pair heads
            where the widths agree (``coattn.time_binding.pair_heads_from_dual``), so the pair score starts
            in the dual encoder's joint space. Off by default.
        freeze_dual: keep the dual branch exactly as ``init_from`` left it (its heads and temperature get no
            gradient, their ``feature_norm`` BatchNorm stays in eval mode): stage 1's converged dual encoder is
            then both the baseline and the fixed reference that residual scoring (``loss.residual_lambda``)
            adds the cascade to. Off by default (the dual heads keep training through ``loss.aux_weight``).
        **model: the architecture: the arguments of ``coattn.CoAttnModel`` (audio_encoder,
            text_encoder, cascade, embed_dim, temperature, learn_temperature, dual_pooling,
            dual_projection, clap_checkpoint, feature_norm, count_head, count_beta, count_detach, count_audio).
    """

    def __init__(self, loss: RetrievalLoss = RetrievalLoss(), optim: Optim = Optim(),
                 evaluation: Evaluation = Evaluation(), feature_cache: str | None = None,
                 init_from: str | None = None, init_pair_from_dual: bool = False, freeze_dual: bool = False,
                 **model: Any):
        super().__init__()
        if self._cli_hparams():  # under LightningCLI: the parsed config (class paths + init args)
            self.save_hyperparameters()
        else:  # built in Python: plain values only, so checkpoints stay loadable with weights_only=True
            self.save_hyperparameters({"loss": asdict(loss), "optim": asdict(optim), "evaluation": asdict(evaluation),
                                       "feature_cache": feature_cache, "init_from": init_from,
                                       **({"init_pair_from_dual": True} if init_pair_from_dual else {}),
                                       **({"freeze_dual": True} if freeze_dual else {}),
                                       **{k: v for k, v in model.items() if not isinstance(v, torch.nn.Module)}})
        self.model = CoAttnModel(**model)
        if loss.count_weight:  # at construction, before any data is read
            from coattn.counting import require_count_head
            require_count_head(self.model)
        self.loss, self.optim, self.evaluation = loss, optim, evaluation
        self.feature_cache, self.init_from, self.init_pair_from_dual = feature_cache, init_from, init_pair_from_dual
        self.freeze_dual = freeze_dual
        if freeze_dual:
            hold_frozen(self._dual_parts())
        if loss.residual_lambda and self.model.has_pairwise:  # the model ranks by the score its pair term trained
            self.model.fusion_lambda.fill_(loss.residual_lambda)
            if isinstance(evaluation.fusion, (int, float)) and evaluation.fusion != loss.residual_lambda:
                log.warning("model.evaluation.fusion %s differs from model.loss.residual_lambda %s: evaluation "
                            "fuses with another lambda than training did", evaluation.fusion, loss.residual_lambda)
        self._features = None  # coattn.train.feature_cache.ModuleFeatureCache, made in setup
        self._collected = EvalAccumulator()  # validation, test and predict: one accumulator
        self.last_losses: dict[str, torch.Tensor] = {}  # this step's loss terms (callbacks.NonFiniteGuard)
        self.last_evaluation: EvaluationResult | None = None  # the last scored split (callbacks)
        self.last_retrieval: dict = {}  # how it was scored (mode, K, cascade passes)
        self.exported_from: str | None = None  # the folder of `coattn test --model DIR` (coattn/train/cli.py)

    def _dual_parts(self) -> tuple[torch.nn.Module, ...]:
        return self.model.dual_audio, self.model.dual_text, self.model.dual_temperature

    @override
    def train(self, mode: bool = True) -> "CoAttnRetrieval":
        super().train(mode)
        if self.freeze_dual:  # a frozen dual branch never updates its BatchNorm statistics either
            hold_frozen(self._dual_parts())
        return self

    @staticmethod
    def _cli_hparams() -> bool:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
        return _given_hyperparameters.get() is not None

    # ---- setup: the per-run tokenizer, the feature cache ----------------------------------------
    @override
    def setup(self, stage: str) -> None:
        enc = self.model.text_encoder
        if stage == "fit" and self.init_from:
            loaded = warm_start(self.model, self.init_from)
            log.info("warm start: %d tensors of the towers and dual heads from %s", loaded, self.init_from)
        if stage == "fit" and self.init_pair_from_dual and self.model.has_pairwise:
            from coattn.errors import ConfigError
            from coattn.time_binding import pair_heads_from_dual
            copied = pair_heads_from_dual(self.model)
            if not copied:
                raise ConfigError("model.init_pair_from_dual: no pair head has the shape of its dual head (cascade "
                                  "width must equal the encoder width, dual_projection linear)")
            log.info("pair heads started from the dual heads: %s", ", ".join(copied))
        if stage == "fit" and enc.needs_tokenizer_fit:
            state = None
            if self.trainer.is_global_zero:
                enc.fit_tokenizer(self.trainer.datamodule.train_captions())
                state = enc.tokenizer_state()
            state = self.trainer.strategy.broadcast(state, src=0)
            enc.load_tokenizer_state(state)
            if self.trainer.is_global_zero:
                out = Path(self.trainer.default_root_dir) / "tokenizer.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(out, state)
        dm = getattr(self.trainer, "datamodule", None)
        wants_events = (self.loss.swap_negatives or self.loss.grounding_weight > 0 or self.loss.count_negatives
                        or self.loss.count_weight > 0)
        if stage == "fit" and wants_events and self.model.has_pairwise:
            if not (hasattr(dm, "set_scene_events") and dm.set_scene_events(True)):
                log.warning("model.loss swap_negatives / grounding_weight / count_negatives: no event timings for the training clips "
                            "(<root>/synth_metadata.json with occurrences): those terms are off")
        if self.feature_cache:  # per trainer: its strategy (ranks) and data module
            if dm is None or not hasattr(dm, "set_load_audio"):
                log.warning("model.feature_cache needs an AudioCaptionDataModule; running the encoders instead")
            else:
                from coattn.train.feature_cache import ModuleFeatureCache
                self._features = ModuleFeatureCache(self.feature_cache, self.model, dm, self.trainer.strategy)

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # the feature cache fills audio_features / text_features (building them on a split's first batch)
        if self._features is not None and isinstance(batch, Batch):
            batch = self._features.attach(batch, self.trainer)
        return batch

    def encode(self, batch: Batch) -> tuple[SequenceFeatures, SequenceFeatures]:
        """Audio and text features of a batch: the cached ones when present, else the encoders'."""
        m = self.model
        audio = (m.encode_audio(batch.audio, batch.audio_lengths) if batch.audio_features is None
                 else batch.audio_features)
        text = m.encode_text(batch.captions) if batch.text_features is None else batch.text_features
        return audio, text

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = self.model.text_encoder.tokenizer_state()
        if state is not None:  # the checkpoint alone must be enough to test and predict
            checkpoint["tokenizer_state"] = state

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "tokenizer_state" in checkpoint:
            self.model.text_encoder.load_tokenizer_state(checkpoint["tokenizer_state"])

    # ---- training -------------------------------------------------------------------------------
    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        kept = batch.valid_items()  # the data module flags unreadable clips instead of dying
        if len(kept) < len(batch):
            self.log("train/skipped_items", float(len(batch) - len(kept)), reduce_fx="sum", batch_size=len(batch))
        audio, text = self.encode(kept)
        out = self.loss(self.model, audio, text, kept.caption_clip, kept.clip_index, kept.captions, kept.events)
        self.last_losses = {k: v.detach() for k, v in out.items()}
        bs = len(kept.captions)
        for k, v in out.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=bs)
        temp = self.model.pair_temperature if self.model.has_pairwise else self.model.dual_temperature
        self.log("train/tau", temp.tau, batch_size=bs)
        # items over all ranks (the dual loss's negatives); one process: bs
        world_bs = global_batch_size(bs, out["loss"].device) if rank_world()[1] > 1 else bs
        self.log("train/global_batch_size", float(world_bs), batch_size=bs)
        return out["loss"]

    # ---- evaluation: encode once, score everything ------------------------------------------------
    def _encode_for_epoch(self, batch: Batch) -> tuple[SequenceFeatures, SequenceFeatures]:
        """``encode`` at the weights' dtype: under ``trainer.precision: bf16-mixed`` the steps run in autocast
        (bf16 features) but the epoch-end scoring, probe and callbacks do not."""
        return tuple(f.to(f.states.device, self.dtype) for f in self.encode(batch))

    def _collect(self, batch: Batch, dataloader_idx: int = 0) -> None:
        self._collected.add(batch, *self._encode_for_epoch(batch), loader=dataloader_idx)

    @override
    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, dataloader_idx)

    @override
    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, dataloader_idx)

    def _evaluate_all(self, stage: str) -> None:
        """Score each evaluation loader alone (``<stage>/<name>/...`` when named); callbacks see the first."""
        first = None
        for loader, name in eval_loaders(self.trainer, stage, self._collected):
            if self._evaluate(stage, loader, name) is not None and first is None:
                first = self.last_evaluation
        if first is not None:
            self.last_evaluation = first

    def _evaluate(self, stage: str, loader: int = 0, name: str | None = None) -> dict[str, float] | None:
        from coattn.metrics import aggregate, per_query_metrics

        prefix = f"{stage}/{name}" if name else stage
        c = self._collected.finish(loader)
        if c is None:
            return None
        auto = self.evaluation.fusion == "auto"
        # sharded: under DDP each rank scores its slice of captions, every rank gets the whole matrix
        result = self.evaluation(self.model, c.audio, c.text, fusion=self.model.fusion_lambda if auto else None,
                                 sharded=True)
        if auto and stage == "val" and loader == 0 and result.pair is not None:  # choose lambda on the first
            # validation set, keep it in the model
            # residual training: its lambda_r first (equal mAP keeps it), the grid after
            grid = (self.loss.residual_lambda, *FUSION_GRID) if self.loss.residual_lambda else FUSION_GRID
            best = max(grid, key=lambda lam: aggregate(per_query_metrics(result.fused(lam), c.caption_clip))[
                "t2a_mAP@10"])  # max() keeps the first (smallest) of equal lambdas
            self.model.fusion_lambda.fill_(best)
            result.scores, result.info["fusion_lambda"] = result.fused(best), best
        self.last_retrieval = result.info
        per_query = per_query_metrics(result.scores, c.caption_clip)  # ranks once, reused by the CIs
        metrics = aggregate(per_query)
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, sync_dist=False, batch_size=1)
        if self.model.has_pairwise:  # each branch's own quality (the dual one is what rerank starts from)
            branches = {"dual": result.dual, "pair": result.pair if result.info["fusion_lambda"] else None}
            for branch, s in branches.items():
                if s is not None:
                    own = aggregate(per_query_metrics(s, c.caption_clip))
                    self.log_dict({f"{prefix}/{branch}_{k}": own[k] for k in ("t2a_mAP@10", "a2t_mAP@10")},
                                  sync_dist=False, batch_size=1)
            self.log(f"{prefix}/fusion_lambda", float(result.info["fusion_lambda"]), batch_size=1)
        try:  # checked at set-up already; should it still fail, the test's results are written first
            multi = relevance_metrics(self.trainer, stage, loader, c, result.scores)  # DCASE 2025 file, if any
        except UserFacingError as exc:
            multi, late = ({}, {}), exc
        else:
            late = None
        self.log_dict({f"{prefix}/{k}": v for k, v in multi[0].items()}, sync_dist=False, batch_size=1)
        self.last_evaluation = EvaluationResult(stage, result.scores.detach().float().cpu(), c.captions, c.fnames,
                                                c.caption_clip.cpu(), dict(metrics))
        if stage == "test" and self.trainer.is_global_zero:
            ckpt = self.trainer.ckpt_path
            extra = {"ckpt_path": ckpt, "model_dir": self.exported_from,
                     "ckpt_fingerprint": file_fingerprint(ckpt) if ckpt and os.path.isfile(ckpt) else None,
                     "cascade": self.model.cascade.kind, **result.info}
            branches = {"fused" if self.model.has_pairwise else "dual": per_query}
            if result.pair is not None and result.info.get("fusion_lambda"):  # the pair score alone, next to it
                branches["pair"] = per_query_metrics(result.pair, c.caption_clip)
                extra["pair_metrics"] = aggregate(branches["pair"])
            if self.model.has_pairwise:
                branches["dual"] = per_query_metrics(result.dual, c.caption_clip)
            extra["dual_metrics"] = aggregate(branches.get("dual", per_query))
            probe = probe_metrics(self.trainer, stage, c, self.model, float(result.info.get("fusion_lambda", 0)))
            if probe:
                extra["probe"] = probe
            subsets = twin_metrics(self.trainer, stage, c, branches)
            if subsets:
                extra["subsets"] = subsets
            out = self.evaluation.output_dir(self.trainer.default_root_dir, "test") / (name or "")
            write_test_results(out, c, result.scores, metrics, per_query, self.evaluation.bootstrap, extra, multi)
            if late is not None:
                raise type(late)(f"{late} (the other results are written to {out})") from late
        if late is not None:
            raise late
        return metrics

    @override
    def on_validation_epoch_end(self) -> None:
        self._evaluate_all("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._evaluate_all("test")

    # ---- predict: embeddings and features of a split ----------------------------------------------
    @override
    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Encode one batch, keep its features for the epoch's files, return its dual embeddings."""
        audio, text = self._encode_for_epoch(batch)
        self._collected.add(batch, audio, text, loader=dataloader_idx)
        return {"clip_embeddings": self.model.dual_embed_audio(audio).float().cpu(),
                "caption_embeddings": self.model.dual_embed_text(text).float().cpu(),
                "fnames": list(batch.fnames), "captions": list(batch.captions),
                "clip_index": batch.clip_index.cpu(), "caption_clip": batch.caption_clip.cpu()}

    @override
    def on_predict_epoch_end(self) -> None:
        c = self._collected.finish()
        if c is not None and self.trainer.is_global_zero:
            write_predictions(self.evaluation.output_dir(self.trainer.default_root_dir, "predict"), c, self.model)

    # ---- optimisation -----------------------------------------------------------------------------
    @override
    def configure_optimizers(self):
        return self.optim.build(self, self.model.text_encoder, self.model.audio_encoder,
                                self.trainer.estimated_stepping_batches)
