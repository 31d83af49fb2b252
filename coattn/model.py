"""The retrieval model as a plain ``nn.Module``: encoders, co-attention cascade, joint-space heads.

Two scoring branches share the encoders:

    dual   s_dual(i, j) = < norm(P_t(pool(T_i))), norm(P_a(pool(A_j))) >      one matmul for all pairs
    pair   s_pair(i, j) = < norm(W_t x_ij), norm(W_a y_ij) >,  (x_ij, y_ij) = Cascade(T_i W_in_t, A_j W_in_a)

``pair`` is the co-attention score of the paper; it must run the cascade on every (caption,
clip) pair; with ``count_head: K`` it adds beta * s_count, a check that each event the caption names
happens as many times as it says (coattn/counting.py). ``dual`` is the dual-encoder baseline (cascade ``none`` uses it alone), trains with an
auxiliary loss and gives the shortlist of two-stage retrieval. With ``dual_pooling: encoder``,
``dual_projection: clap`` and a LAION-CLAP checkpoint for both towers and the projections, the
dual branch *is* CLAP's zero-shot retrieval model.

No Lightning here: the LightningModule orchestrates, this module computes. ``from_checkpoint``
reads a ``coattn fit`` checkpoint (weights only) without Lightning, for notebooks and tools;
``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (huggingface_hub's mixin) write and read
exported model folders (coattn/hub.py).
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from coattn import hub
from coattn.coattention import ClipStage, CoAttentionCascade, masked_mean
from coattn.counting import CountHead
from coattn.features import PreparedAudio, PreparedText, SequenceFeatures
from coattn.loss import Temperature

log = logging.getLogger(__name__)


class Projection(nn.Module):
    """Map to the joint space and L2-normalise. ``clap``: Linear-ReLU-Linear, LAION-CLAP's head.

    ``batch_norm`` standardises each input feature over the batch first (see ``feature_norm``).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: Literal["linear", "clap"] = "linear",
                 batch_norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim) if batch_norm else nn.Identity()
        if kind == "clap":
            self.proj = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))
        else:
            self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # normalised in fp32 (bf16 autocast: cosines to ~1e-3)
        return F.normalize(self.proj(self.norm(x)).float(), dim=-1)


class InputProjection(nn.Module):
    """Encoder states -> cascade width, optionally standardised per feature over real positions."""

    def __init__(self, in_dim: int, width: int, batch_norm: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim) if batch_norm else None
        self.proj = nn.Linear(in_dim, width)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:  # statistics from real frames/tokens only, never from padding
            normed = torch.zeros_like(states)
            normed[mask] = self.norm(states[mask])
            states = normed
        return self.proj(states)


class CoAttnModel(nn.Module, PyTorchModelHubMixin, **hub.HUB_METADATA):
    """Encoders + cascade + heads. See the module docstring for the two scores."""

    def __init__(self, audio_encoder: nn.Module, text_encoder: nn.Module, cascade: CoAttentionCascade,
                 embed_dim: int = 512, temperature: float = 0.07, learn_temperature: bool = True,
                 dual_pooling: Literal["mean", "encoder"] = "mean",
                 dual_projection: Literal["linear", "clap"] = "linear",
                 clap_checkpoint: str | None = None, feature_norm: bool = False, count_head: int = 0,
                 count_beta: float = 1.0, count_detach: bool = True, count_audio: Literal["pair", "clip"] = "pair"):
        super().__init__()
        self.audio_encoder, self.text_encoder, self.cascade = audio_encoder, text_encoder, cascade
        self.dual_pooling = dual_pooling
        da, dt = audio_encoder.out_dim, text_encoder.out_dim
        self.dual_audio = Projection(da, embed_dim, dual_projection, feature_norm)
        self.dual_text = Projection(dt, embed_dim, dual_projection, feature_norm)
        self.dual_temperature = Temperature(temperature, learn_temperature)
        if self.has_pairwise:
            d = cascade.width
            self.audio_in = InputProjection(da, d, feature_norm)
            self.text_in = InputProjection(dt, d, feature_norm)
            self.pair_audio, self.pair_text = Projection(d, embed_dim), Projection(d, embed_dim)
            self.pair_temperature = Temperature(temperature, learn_temperature)
        self.count_head = None
        if count_head:  # the pair score's count check (coattn/counting.py): reads the iterating audio stream
            if cascade.kind != "iterating":
                raise ValueError(f"count_head needs the iterating cascade (a per-pair audio stream), not "
                                 f"{cascade.kind!r}: set model.count_head: 0 or cascade kind: iterating")
            self.count_head = CountHead(cascade.width, max_count=count_head, beta=count_beta, detach=count_detach,
                                        reads=count_audio)
        if clap_checkpoint:
            self.load_clap_projections(clap_checkpoint, dual_projection)
        # lambda of s_pair + lambda * s_dual, chosen on validation (evaluation.fusion: auto); 0 = pair only
        self.register_buffer("fusion_lambda", torch.zeros(()))
        self._register_load_state_dict_pre_hook(_default_fusion_lambda)

    @property
    def has_pairwise(self) -> bool:
        return self.cascade.kind != "none"

    def load_clap_projections(self, path: str, kind: str) -> None:
        """Start the dual heads from LAION-CLAP's ``audio_projection.*`` / ``text_projection.*``."""
        from coattn.encoders import load_clap_state_dict

        if kind != "clap":
            raise ValueError(f"clap_checkpoint {path!r} holds CLAP's MLP projections: set "
                             "model.dual_projection: clap to load them")
        state = load_clap_state_dict(path)
        for prefix, head in (("audio_projection.", self.dual_audio), ("text_projection.", self.dual_text)):
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if not sub:
                raise ValueError(f"{path}: no '{prefix}*' keys; is this a LAION-CLAP checkpoint?")
            try:
                head.proj.load_state_dict(sub)
            except RuntimeError as err:
                raise ValueError(f"{path}: '{prefix}*' does not fit this model "
                                 f"(encoder width or embed_dim differ): {err}") from None
        log.info("loaded CLAP projections from %s", path)

    # ---- encoding: once per clip / caption --------------------------------------------------
    def encode_audio(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> SequenceFeatures:
        """Frame features of (B, S) waveforms; ``lengths`` (B,) masks zero padding (``pad: zeros``)."""
        return self.audio_encoder(waveform) if lengths is None else self.audio_encoder(waveform, lengths)

    def encode_text(self, captions: list[str]) -> SequenceFeatures:
        return self.text_encoder(captions)

    def dual_embed_audio(self, feats: SequenceFeatures) -> torch.Tensor:
        pooled = feats.pooled if self.dual_pooling == "encoder" else masked_mean(feats.states, feats.mask)
        return self.dual_audio(pooled)

    def dual_embed_text(self, feats: SequenceFeatures) -> torch.Tensor:
        pooled = feats.pooled if self.dual_pooling == "encoder" else masked_mean(feats.states, feats.mask)
        return self.dual_text(pooled)

    def dual_scores(self, audio: SequenceFeatures, text: SequenceFeatures) -> torch.Tensor:
        """(N captions, M clips) cosine scores of the dual branch: one matrix product, float32."""
        return (self.dual_embed_text(text) @ self.dual_embed_audio(audio).t()).float()

    def prepare_text(self, feats: SequenceFeatures) -> PreparedText:
        """Per-caption part of the pair score (for ``iterating``: the whole text stream, projected once)."""
        prep = self.cascade.prepare_text(self.text_in(feats.states, feats.mask), feats.mask)
        if prep.pooled is not None:  # the text vector is pair-independent: project it once per caption
            prep.embedding = self.pair_text(prep.pooled)
        if self.count_head is not None:
            prep.count = self.count_head.text(prep.states, prep.mask)
        return prep

    def prepare_audio(self, feats: SequenceFeatures) -> PreparedAudio:
        """Per-clip part of the pair score: frames at the cascade's width (and temporal positions)."""
        return self.cascade.prepare_audio(self.audio_in(feats.states, feats.mask), feats.mask)

    # ---- pair scores ------------------------------------------------------------------------
    def score_block(self, text: PreparedText, rows: torch.Tensor, stage: ClipStage, inv: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of caption ``rows[i]`` with clip ``inv[i, c]`` of ``stage``: (b, r).

        The unit of work of training (a B x B grid) and of the tiled scoring engine
        (``coattn.retrieval``); ``stage`` = ``self.cascade.clip_stage(audio, clips)``.
        """
        counting = self.count_head is not None
        t, a, *stream = self.cascade.pair_vectors(text, rows, stage, inv, frames=counting)
        a = self.pair_audio(a)  # (b, r, E)
        if t.dim() == 2:  # iterating: one text vector per caption row
            t = (self.pair_text(t) if text.embedding is None else text.embedding[rows])[:, None, :]
        else:
            t = self.pair_text(t)
        cos = (t.float() * a.float()).sum(-1)  # fp32 cosines: the loss divides them by tau = 0.07
        if not counting:
            return cos
        found, my = self.count_head.audio(text.count, rows, stage, inv, tuple(stream))
        return cos + self.count_head.beta * self.count_head.score(text.count, rows, found, my, inv.shape[1])

    def score_pairs(self, text: PreparedText, ti: torch.Tensor, audio: PreparedAudio, aj: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the P pairs (caption ti[p], clip aj[p]) after co-attention: (P,)."""
        uniq, inv = torch.unique(aj, return_inverse=True)
        return self.score_block(text, ti, self.cascade.clip_stage(audio, uniq), inv[:, None])[:, 0]

    def score_grid(self, text: PreparedText, audio: PreparedAudio) -> torch.Tensor:
        """All N x M pairs at once: (N, M). The training path (B x B); evaluation tiles it."""
        n, m = len(text), len(audio)
        clips = torch.arange(m, device=audio.states.device)
        rows = torch.arange(n, device=audio.states.device)
        return self.score_block(text, rows, self.cascade.clip_stage(audio, clips), clips.expand(n, m))

    # ---- a coattn checkpoint, without Lightning ---------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "CoAttnModel":
        """The model of a ``coattn fit`` checkpoint (weights only), in eval mode.

        The architecture comes from the checkpoint's hyper-parameters (its ``model`` section:
        this class's arguments, encoders and cascade as ``class_path`` + ``init_args``), the weights
        from ``state_dict`` (``model.*``), a per-run tokenizer from ``tokenizer_state``.
        """
        from coattn.errors import CheckpointError
        from coattn.io import load_checkpoint

        ckpt = load_checkpoint(path, map_location=map_location)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise CheckpointError(f"{str(path)!r} is not a checkpoint of `coattn fit` (no 'state_dict')")
        hparams = ckpt.get("hyper_parameters") or {}
        names = [p for p in inspect.signature(cls).parameters if p != "self"]
        missing = [n for n in ("audio_encoder", "text_encoder", "cascade") if n not in hparams]
        if missing:
            raise CheckpointError(f"{str(path)!r} stores no model configuration ({missing} missing from its "
                                  "hyper-parameters): load it with the config it was trained with "
                                  "(`coattn test --config`)")
        try:
            kwargs = {n: build_component(hparams[n], _COMPONENT_BASES.get(n)) for n in names if n in hparams}
            model = cls(**kwargs)
        except (TypeError, ValueError, ImportError, AttributeError) as exc:
            raise CheckpointError(f"cannot build the model stored in {str(path)!r}: {exc}") from None
        if ckpt.get("tokenizer_state") is not None:
            model.text_encoder.load_tokenizer_state(ckpt["tokenizer_state"])
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(f"{str(path)!r}: weights do not fit the stored configuration (missing "
                                  f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
        return model.to(map_location).eval()

    # ---- exported model folders: the hooks of huggingface_hub's mixin (coattn/hub.py) ------------
    def _save_pretrained(self, save_directory) -> None:
        hub.save_folder(self, save_directory)

    def generate_model_card(self, *args, **kwargs):
        return super().generate_model_card(*args, **{**hub.card_fields(self), **kwargs})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "CoAttnModel":
        """The mixin's ``from_pretrained``, with a local folder's ``config.json`` checked first: the mixin
        ``json.load``s it without naming the file (a bare ``JSONDecodeError`` traceback)."""
        folder = Path(pretrained_model_name_or_path).expanduser()
        if folder.is_dir():
            hub.read_config(folder)  # a ConfigError naming the file and what is wrong
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir=None,
                         force_download: bool = False, local_files_only: bool = False, token=None,
                         map_location: str | torch.device = "cpu", config: dict | None = None,
                         **_config_values) -> "CoAttnModel":
        """``CoAttnModel.from_pretrained(folder or Hub id, map_location=...)``: the architecture always
        comes from the folder's config.json (the mixin also passes its values one by one: ignored)."""
        folder = hub.local_folder(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                  local_files_only=local_files_only, token=token)
        config = hub.read_config(folder, config)
        names = [p for p in inspect.signature(cls).parameters if p != "self"]
        model = cls(**{n: build_component(config[n], _COMPONENT_BASES.get(n)) for n in names if n in config})
        return hub.load_weights(model, folder, config, map_location).to(map_location).eval()


def _default_fusion_lambda(state_dict, prefix, *args, **kwargs) -> None:
    """Checkpoints from before score fusion have no ``fusion_lambda``: read them as lambda = 0."""
    state_dict.setdefault(prefix + "fusion_lambda", torch.zeros(()))


_COMPONENT_BASES = {"audio_encoder": nn.Module, "text_encoder": nn.Module, "cascade": CoAttentionCascade}


def build_component(spec: Any, base: type | None = None) -> Any:
    """A value of a stored configuration: ``{"class_path", "init_args"}`` is built (it must name a
    subclass of ``base``: a checkpoint must not make coattn call arbitrary code), anything else is
    returned as it is."""
    if not (isinstance(spec, dict) and "class_path" in spec):
        return spec
    module_name, _, name = str(spec["class_path"]).rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    if base is None or not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"class_path {spec['class_path']!r} is not a {getattr(base, '__name__', 'known component')}")
    return hub.record_spec(cls(**{k: build_component(v) for k, v in (spec.get("init_args") or {}).items()}), spec)
