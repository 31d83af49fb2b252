"""``CoAttnRetrieval``: the LightningModule. It orchestrates (steps, logging, optimisers, evaluation
files); the computation lives in ``CoAttnModel`` and the components it receives from the config.

    coattn fit  --config experiments/demo.yaml
    coattn test --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt

Training step (B clips, B captions): encode each once, score all B x B pairs with the cascade,
symmetric NT-Xent (+ ``aux_weight`` x the dual-encoder NT-Xent). Validation/test: encode every
clip and every caption of the split once, then score all captions x all clips in tiles and
compute the DCASE metrics; ``test`` also writes metrics.json, scores.npz and the submission file.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from typing_extensions import override

from coattn.atomic import atomic_write_text
from coattn.coattention import CoAttentionCascade, PreparedText
from coattn.distributed import gather_eval, gather_pair_audio, global_batch_size, global_nt_xent, rank_world
from coattn.encoders import ClapAudioEncoder, TextEncoder
from coattn.features import SequenceFeatures
from coattn.loss import nt_xent
from coattn.model import CoAttnModel
from coattn.scoring import score_matrix

log = logging.getLogger(__name__)


class CoAttnRetrieval(pl.LightningModule):
    """Language-based audio retrieval with a co-attention cascade.

    Args:
        audio_encoder: CLAP HTS-AT audio tower (frame-level features).
        text_encoder: RoBERTa-style text tower (token-level features).
        cascade: the co-attention cascade (``kind``: none | single | stacking | iterating).
        embed_dim: joint-space dimension of both heads.
        temperature: initial (or fixed) NT-Xent temperature tau.
        learn_temperature: learn tau (as log(1/tau), clamped to [0.01, 1]) or keep it fixed.
        aux_weight: weight of the dual-encoder NT-Xent term (ignored for cascade ``none``,
            whose only loss it is). Trains the shortlist used by two-stage retrieval.
        dual_pooling: ``mean`` of frames/tokens, or ``encoder`` (HTS-AT embedding, RoBERTa pooler:
            CLAP's own pooling).
        dual_projection: ``linear`` or ``clap`` (CLAP's Linear-ReLU-Linear head).
        clap_checkpoint: LAION-CLAP checkpoint to start the dual heads from (needs ``clap``).
        feature_norm: standardise each encoder feature over the batch (BatchNorm) before both
            branches. Needed when the encoders train from scratch (the demo): randomly initialised
            HTS-AT features of different clips have cosine ~0.99, and without it the contrastive
            loss collapses them to one vector (loss stuck at log B). Off for pretrained towers.
        lr: learning rate of everything but the encoders.
        encoder_lr: learning rate of the (unfrozen) encoders.
        audio_encoder_lr: learning rate of the audio encoder when it should differ from the text
            encoder's (None = ``encoder_lr``), e.g. a pretrained CLAP audio tower fine-tuned
            gently under a text tower trained from scratch; 0 trains it in training mode without
            moving its weights (a diagnostic used in README, "Training HTS-AT from scratch").
        weight_decay: AdamW weight decay (not applied to biases, norms, temperatures).
        warmup_steps: linear warm-up steps, then cosine decay to 0 over the run.
        eval_tile_pairs: caption-clip pairs per cascade pass in evaluation (memory bound).
        bootstrap: bootstrap resamples for the 95 % confidence intervals (0 = none).
        results_dir: where ``test`` writes its files; default ``<default_root_dir>/results/<stage>``.
        feature_cache: folder of the feature cache (``coattn/feature_cache.py``): frozen encoders
            run once per clip / caption and steps read their stored outputs. None = off.
        pair_negatives: under DDP, score local captions against this rank's clips (``local``,
            B x B) or against every rank's clips (``global``, B x G) in the co-attention term.
            The dual term always uses every rank's negatives (``coattn/distributed.py``).
        retrieval_mode: evaluation scoring: ``exact`` (the cascade scores every caption x clip
            pair) or ``rerank`` (two-stage: the dual encoder shortlists the ``rerank_k`` best clips
            per caption and captions per clip, the cascade re-scores that union; the rest ranks
            below, in dual order: ``coattn/rerank.py``). metrics.json records the mode, K and the
            cascade passes. Ignored for cascade ``none``.
        rerank_k: shortlist length K of ``rerank``.
    """

    def __init__(self, audio_encoder: ClapAudioEncoder, text_encoder: TextEncoder,
                 cascade: CoAttentionCascade, embed_dim: int = 512, temperature: float = 0.07,
                 learn_temperature: bool = True, aux_weight: float = 0.5,
                 dual_pooling: Literal["mean", "encoder"] = "mean",
                 dual_projection: Literal["linear", "clap"] = "linear",
                 clap_checkpoint: str | None = None, lr: float = 1e-4, encoder_lr: float = 1e-5,
                 audio_encoder_lr: float | None = None,
                 weight_decay: float = 0.01, warmup_steps: int = 100, eval_tile_pairs: int = 16384,
                 bootstrap: int = 1000, results_dir: str | None = None, feature_cache: str | None = None,
                 pair_negatives: Literal["local", "global"] = "local",
                 retrieval_mode: Literal["exact", "rerank"] = "exact", rerank_k: int = 64,
                 feature_norm: bool = False):
        super().__init__()
        # Under LightningCLI this stores the config (class paths + init args), not the modules.
        self.save_hyperparameters(ignore=[] if self._cli_hparams() else ["audio_encoder", "text_encoder", "cascade"])
        self.model = CoAttnModel(audio_encoder, text_encoder, cascade, embed_dim, temperature,
                                 learn_temperature, dual_pooling, dual_projection, clap_checkpoint,
                                 feature_norm)
        self.aux_weight, self.lr, self.encoder_lr = aux_weight, lr, encoder_lr
        self.audio_encoder_lr = encoder_lr if audio_encoder_lr is None else audio_encoder_lr
        self.weight_decay, self.warmup_steps = weight_decay, warmup_steps
        self.eval_tile_pairs, self.bootstrap, self.results_dir = eval_tile_pairs, bootstrap, results_dir
        if retrieval_mode not in ("exact", "rerank") or rerank_k < 1:
            raise ValueError(f"retrieval_mode must be 'exact' or 'rerank' and rerank_k >= 1, got "
                             f"{retrieval_mode!r}, {rerank_k}")
        self.retrieval_mode, self.rerank_k = retrieval_mode, rerank_k
        self.retrieval_info: dict = {}  # how the last evaluation scored (mode, K, cascade passes)
        if pair_negatives not in ("local", "global"):
            raise ValueError(f"pair_negatives must be 'local' or 'global', got {pair_negatives!r}")
        self.feature_cache, self.pair_negatives = feature_cache, pair_negatives
        self._features = None  # coattn.feature_cache.ModuleFeatureCache, made in setup
        self._eval: dict[str, list] = {}

    @staticmethod
    def _cli_hparams() -> bool:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
        return _given_hyperparameters.get() is not None

    # ---- tokenizer that is trained per run (tiny text encoder) ------------------------------
    @override
    def setup(self, stage: str) -> None:
        enc = self.model.text_encoder
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
        if self.feature_cache:  # per trainer: its strategy (ranks) and data module
            if dm is None or not hasattr(dm, "set_load_audio"):
                log.warning("model.feature_cache needs an AudioCaptionDataModule; running the encoders instead")
            else:
                from coattn.feature_cache import ModuleFeatureCache
                self._features = ModuleFeatureCache(self.feature_cache, self.model, dm, self.trainer.strategy)

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # the feature cache adds audio_features / text_features (building them on a split's first batch)
        if self._features is not None and isinstance(batch, dict):
            batch = self._features.attach(batch, self.trainer)
        return batch

    def encode(self, batch: dict) -> tuple[SequenceFeatures, SequenceFeatures]:
        """Audio and text features of a batch: the cached ones when present, else the encoders'."""
        m = self.model
        audio = batch.get("audio_features")
        text = batch.get("text_features")
        return (m.encode_audio(batch["audio"]) if audio is None else audio,
                m.encode_text(batch["captions"]) if text is None else text)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = self.model.text_encoder.tokenizer_state()
        if state is not None:  # the checkpoint alone must be enough to test and predict
            checkpoint["tokenizer_state"] = state

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "tokenizer_state" in checkpoint:
            self.model.text_encoder.load_tokenizer_state(checkpoint["tokenizer_state"])

    # ---- training ---------------------------------------------------------------------------
    def _valid_items(self, batch: dict) -> dict:
        """Drop items whose audio could not be read (the data module flags them, never dies)."""
        valid = batch.get("valid")
        if valid is None or bool(valid.all()):
            return batch
        keep = valid.nonzero().squeeze(1)
        self.log("train/skipped_items", float(len(valid) - len(keep)), reduce_fx="sum", batch_size=len(valid))
        out = {"audio": batch["audio"][keep], "clip_index": batch["clip_index"][keep],
               "captions": [batch["captions"][i] for i in keep.tolist()],
               "caption_clip": batch["caption_clip"][keep]}
        for key in ("audio_features", "text_features"):  # from the feature cache
            if batch.get(key) is not None:
                out[key] = batch[key].index(keep)
        return out

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Training losses of one batch whose item b is (caption b, clip b)."""
        m = self.model
        audio, text = self.encode(batch)
        clip_ids, caption_clip = batch["clip_index"], batch["caption_clip"]
        out: dict[str, torch.Tensor] = {}
        # negatives of every rank under DDP; one process: nt_xent on the B x B logits
        out["dual_loss"] = global_nt_xent(m.dual_embed_text(text), m.dual_embed_audio(audio),
                                          m.dual_temperature.scale, caption_clip, clip_ids)
        if m.has_pairwise:
            prepared_audio = m.prepare_audio(audio)
            if self.pair_negatives == "global" and rank_world()[1] > 1:
                prepared_audio, col_clip, targets = gather_pair_audio(*prepared_audio, clip_ids)
            else:
                col_clip, targets = clip_ids, None
            sims = m.score_grid(m.prepare_text(text), prepared_audio)  # (B, B) or (B, G): every pair
            out["pair_loss"] = nt_xent(sims * m.pair_temperature.scale, caption_clip, col_clip, targets)
            out["loss"] = out["pair_loss"] + self.aux_weight * out["dual_loss"]
        else:
            out["loss"] = out["dual_loss"]
        return out

    @override
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = self._valid_items(batch)
        out = self.losses(batch)
        self.last_train_losses = {k: v.detach() for k, v in out.items()}  # named by callbacks.numerics
        bs = len(batch["captions"])
        for k, v in out.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=bs)
        temp = self.model.pair_temperature if self.model.has_pairwise else self.model.dual_temperature
        self.log("train/tau", temp.tau, batch_size=bs)
        if rank_world()[1] > 1:  # items over all ranks (the dual loss's negatives); one process: bs
            self.log("train/global_batch_size", float(global_batch_size(bs, out["loss"].device)), batch_size=bs)
        else:
            self.log("train/global_batch_size", float(bs), batch_size=bs)
        return out["loss"]

    # ---- evaluation: encode once, score everything ------------------------------------------
    def _eval_step(self, batch: dict) -> None:
        audio, text = self.encode(batch)
        e = self._eval
        e.setdefault("audio", []).append(audio)
        e.setdefault("text", []).append(text)
        e.setdefault("clip_index", []).append(batch["clip_index"])
        e.setdefault("caption_clip", []).append(batch["caption_clip"])
        e.setdefault("fnames", []).extend(batch["fnames"])
        e.setdefault("captions", []).extend(batch["captions"])

    @override
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    @override
    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def dual_scores(self, audio: SequenceFeatures, text: SequenceFeatures) -> torch.Tensor:
        """(N captions, M clips) scores of the dual branch: one matrix product."""
        return (self.model.dual_embed_text(text) @ self.model.dual_embed_audio(audio).t()).float()

    def score_all(self, audio: SequenceFeatures, text: SequenceFeatures,
                  dual: torch.Tensor | None = None) -> torch.Tensor:
        """(N captions, M clips) scores of the configured model: co-attention (``exact`` or
        ``rerank``, see ``retrieval_mode``), or dual for ``none``. ``dual``: the dual scores if
        already computed. Sets ``self.retrieval_info``."""
        m = self.model
        n, n_clips = len(text), len(audio)
        if not m.has_pairwise:
            self.retrieval_info = {"retrieval_mode": "dual", "cascade_passes": 0}
            return self.dual_scores(audio, text) if dual is None else dual
        if self.retrieval_mode == "rerank":
            from coattn.rerank import rerank_matrix
            dual = self.dual_scores(audio, text) if dual is None else dual
            scores, info = rerank_matrix(m, m.prepare_text(text), m.prepare_audio(audio), dual, self.rerank_k,
                                         self.eval_tile_pairs)
            self.retrieval_info = info.as_dict()
            return scores
        self.retrieval_info = {"retrieval_mode": "exact", "cascade_passes": n * n_clips,
                               "cascade_passes_exact": n * n_clips, "cascade_cost_fraction": 1.0}
        return score_matrix(m, m.prepare_text(text), m.prepare_audio(audio), self.eval_tile_pairs)

    def _eval_epoch_end(self, stage: str) -> dict[str, float] | None:
        from coattn.metrics import aggregate, per_query_metrics

        e, self._eval = self._eval, {}
        if not e:
            return None
        e = gather_eval(e)  # DDP: every rank's items, sampler repeats removed, clip order
        audio, text = SequenceFeatures.cat(e["audio"]), SequenceFeatures.cat(e["text"])
        clip_index = torch.cat(e["clip_index"])
        # caption_clip holds split-wide clip indices; map them to rows of the gathered clips.
        row_of = torch.full((int(clip_index.max()) + 1,), -1, dtype=torch.long, device=clip_index.device)
        row_of[clip_index] = torch.arange(len(clip_index), device=clip_index.device)
        caption_clip = row_of[torch.cat(e["caption_clip"])]
        with torch.no_grad():
            dual = self.dual_scores(audio, text)  # one matrix product, shared with score_all
            scores = self.score_all(audio, text, dual)
        per_query = per_query_metrics(scores, caption_clip)  # ranks computed once, reused by the CIs
        metrics = aggregate(per_query)
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=False, batch_size=1)
        if self.model.has_pairwise:  # the dual shortlist's own quality: what rerank starts from
            dual_metrics = aggregate(per_query_metrics(dual, caption_clip))
            self.log_dict({f"{stage}/dual_{k}": dual_metrics[k] for k in ("t2a_mAP@10", "a2t_mAP@10")},
                          sync_dist=False, batch_size=1)
        # the last evaluation, for callbacks (retrieval examples) that run after this hook
        self.last_eval = {"stage": stage, "scores": scores.detach().float().cpu(), "captions": list(e["captions"]),
                          "fnames": list(e["fnames"]), "caption_clip": caption_clip.cpu(), "metrics": dict(metrics)}
        if stage == "test":
            self._write_test_results(scores, caption_clip, e["captions"], e["fnames"], metrics, per_query)
        return metrics

    @override
    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _write_test_results(self, scores, caption_clip, captions, fnames, metrics, per_query) -> None:
        from coattn.metrics import bootstrap_ci, chance_metrics
        from coattn.results import format_table, write_results

        if not self.trainer.is_global_zero:
            return
        n_per_clip = torch.bincount(caption_clip, minlength=len(fnames))
        chance = chance_metrics(caption_clip, len(fnames))
        ci = bootstrap_ci(per_query, n_boot=self.bootstrap) if self.bootstrap else {}
        out = Path(self.results_dir or Path(self.trainer.default_root_dir) / "results" / "test")
        extra = {"ckpt_path": self.trainer.ckpt_path, "cascade": self.model.cascade.kind, **self.retrieval_info,
                 "n_captions": len(captions), "n_clips": len(fnames),
                 "captions_per_clip": sorted(set(n_per_clip.tolist()))}
        paths = write_results(out, scores.cpu(), caption_clip.cpu(), captions, fnames, metrics, ci, chance, extra)
        print(format_table(metrics, chance, ci))
        if self.retrieval_info.get("retrieval_mode") == "rerank":
            info = self.retrieval_info
            print(f"retrieval: rerank, K={info['rerank_k']}: {info['cascade_passes']:,} cascade passes "
                  f"({100 * info['cascade_cost_fraction']:.1f} % of exact)")
        print(f"results written to {out}: " + ", ".join(p.name for p in paths.values()))

    # ---- predict: embeddings and features of a dataset (coattn/predict.py) --------------------
    @override
    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        from coattn.predict import predict_step
        return predict_step(self, batch)

    @override
    def on_predict_epoch_end(self) -> None:
        from coattn.predict import on_predict_epoch_end
        on_predict_epoch_end(self)

    # ---- optimisation -----------------------------------------------------------------------
    @override
    def configure_optimizers(self):
        lr_of = {id(p): self.encoder_lr for p in self.model.text_encoder.parameters()}
        lr_of.update({id(p): self.audio_encoder_lr for p in self.model.audio_encoder.parameters()})
        groups: dict[tuple[float, bool], list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim < 2 or "log_scale" in name  # biases, norms, temperatures
            groups.setdefault((lr_of.get(id(p), self.lr), no_decay), []).append(p)
        params = [{"params": ps, "lr": lr, "weight_decay": 0.0 if no_decay else self.weight_decay}
                  for (lr, no_decay), ps in groups.items()]
        opt = torch.optim.AdamW(params)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = min(self.warmup_steps, total // 2)

        def factor(step: int) -> float:  # linear warm-up, then cosine to 0
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
