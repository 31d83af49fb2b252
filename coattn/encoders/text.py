"""Text encoders: captions -> token features (B, L, D) + pooled vector.

Why two kinds: ``HFTextEncoder`` is the paper's RoBERTa (optionally CLAP's fine-tuned text branch);
``TinyTextEncoder`` is a small random RoBERTa with a BPE tokenizer trained on the run's own
captions, so tests and demos run in seconds with no download. The tokenizer-fit hooks let the
LightningModule train that tokenizer once per run and store it in checkpoints.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from coattn.encoders.clap_checkpoint import load_branch, load_clap_state_dict, select_prefix
from coattn.encoders.packaged import PREFIX, resolve_model
from coattn.features import SequenceFeatures
from coattn.io import file_identity, weights_digest

log = logging.getLogger(__name__)

MIN_VOCAB = 1000  # offline RobertaTokenizer.from_pretrained silently yields a 5-token junk tokenizer
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4 as in RoBERTa, so pad id = 1


def hf_offline() -> bool:
    """True when the HF hub must not be contacted (read at call time, not only at import time)."""
    from huggingface_hub import constants

    flags = (os.environ.get(v, "").strip().lower() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in {"1", "true", "yes", "on"} for f in flags) or bool(constants.HF_HUB_OFFLINE)


class TextEncoder(nn.Module):
    """Base class: tokenizes captions itself and returns ``SequenceFeatures``.

    Subclasses set ``self.model`` (a Hugging Face encoder returning ``last_hidden_state`` and
    optionally ``pooler_output``), ``self.tokenizer`` and ``self.out_dim``. pooled =
    ``pooler_output`` when the model has a pooler (what CLAP uses), else the masked mean;
    ``self.pooling = "mean"`` takes the masked mean whatever the model has (sentence-transformers').
    """

    def __init__(self, max_length: int, freeze: bool):
        super().__init__()
        if max_length < 3:
            raise ValueError(f"max_length must leave room for <s> and </s>, got {max_length}")
        self.max_length = max_length
        self.freeze = freeze
        self.tokenizer = None
        self.out_dim: int = 0
        self.pooling = "auto"

    def _apply_freeze(self) -> None:
        if self.freeze:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> "TextEncoder":
        # a frozen encoder stays in eval (no dropout) so its features are deterministic
        return super().train(mode and not self.freeze)

    # --- tokenizer hooks (only per-run-trained tokenizers need them) ---
    @property
    def needs_tokenizer_fit(self) -> bool:
        return False

    def fit_tokenizer(self, captions: list[str]) -> None:
        """Train the tokenizer on ``captions``; a no-op for pretrained tokenizers."""

    def tokenizer_state(self) -> str | None:
        """JSON of a per-run tokenizer to store in checkpoints; None for pretrained tokenizers."""
        return None

    def load_tokenizer_state(self, state: str) -> None:
        raise ValueError(f"{type(self).__name__} has a fixed pretrained tokenizer "
                         "and cannot load one from a checkpoint")

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError(f"{type(self).__name__} has no tokenizer yet: call fit_tokenizer(train captions) "
                               "or load_tokenizer_state(json from a checkpoint) before encoding text")
        return self.tokenizer

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask`` (B, L), padded to the longest caption, truncated at ``max_length``."""
        if isinstance(captions, str):
            raise TypeError("tokenize/forward take a list of captions, not a single string")
        enc = self._require_tokenizer()(list(captions), padding="longest", truncation=True,
                                        max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def token_offsets(self, captions: list[str]) -> list[list[tuple[int, int]]]:
        """Each token's (char start, char end) in its caption, as ``tokenize`` cuts it ((0, 0): special tokens)."""
        enc = self._require_tokenizer()(list(captions), truncation=True, max_length=self.max_length,
                                        return_offsets_mapping=True)
        return [[(int(a), int(z)) for a, z in offs] for offs in enc["offset_mapping"]]

    def forward(self, captions: list[str]) -> SequenceFeatures:
        batch = self.tokenize(captions)
        device = next(self.model.parameters()).device
        ids, attn = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            out = self.model(input_ids=ids, attention_mask=attn)
        states = out.last_hidden_state  # (B, L, D)
        mask = attn.bool()
        pooled = getattr(out, "pooler_output", None) if self.pooling != "mean" else None
        if pooled is None:
            w = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * w).sum(1) / w.sum(1).clamp_min(1.0)
        return SequenceFeatures(states=states, mask=mask, pooled=pooled)

    def identity(self) -> str:
        raise NotImplementedError


class HFTextEncoder(TextEncoder):
    """A pretrained Hugging Face encoder (the paper's RoBERTa), optionally with CLAP's text branch.

    Args:
        model: hub id (e.g. "roberta-base"), local folder holding tokenizer + weights, or
            ``package:<name>`` for a model shipped in an installed package, extracted once
            (``coattn.encoders.packaged``; e.g. ``package:all-minilm-l6-v2``, 384-d). With
            HF_HUB_OFFLINE=1 only local folders and the local HF cache are used.
        max_length: captions are truncated to this many tokens including <s> and </s>
            (CLAP used 77; Clotho captions are 8-20 words, so 32 truncates almost nothing).
        clap_checkpoint: path of an official non-fusion LAION-CLAP checkpoint (e.g.
            630k-audioset-best.pt): its ``text_branch.*`` (a RobertaModel) is loaded over ``model``'s
            weights; use ``model: roberta-base`` (its tokenizer) with it.
        freeze: no gradients, always eval mode, forward under ``torch.no_grad``.
        pretrained: load ``model``'s weights. False: build the network from its configuration alone
            (random weights) for weights that come from elsewhere: an exported coattn model
            (``coattn export``) keeps the tokenizer and ``config.json`` in its ``text_encoder/``
            folder and every weight in its ``model.safetensors``.
        pooling: the ``pooled`` vector. "pooler": the model's ``pooler_output`` (RoBERTa/CLAP);
            "mean": the mean of the real tokens' states (sentence-transformers' pooling: BERT's
            pooler in all-MiniLM-L6-v2's file is the untrained NSP head); "auto": "mean" when the
            folder is a sentence-transformers model whose ``1_Pooling/config.json`` says mean
            tokens, else "pooler" when the model has one, else "mean".
    """

    def __init__(self, model: str = "roberta-base", max_length: int = 32, clap_checkpoint: str | None = None,
                 freeze: bool = False, pretrained: bool = True, pooling: str = "auto"):
        super().__init__(max_length, freeze)
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if pooling not in ("auto", "pooler", "mean"):
            raise ValueError(f"pooling must be 'auto', 'pooler' or 'mean', got {pooling!r}")
        self.model_name = model
        self.clap_checkpoint = clap_checkpoint
        packaged = model.startswith(PREFIX)
        model = resolve_model(model)  # package:<name> -> its prepared folder
        is_dir = Path(model).expanduser().is_dir()
        offline = hf_offline()
        try:
            # local_files_only: offline, from_pretrained would otherwise retry the hub for minutes
            tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=offline or is_dir)
            if pretrained:
                net = AutoModel.from_pretrained(model, local_files_only=offline or is_dir)
            else:
                net = AutoModel.from_config(AutoConfig.from_pretrained(model, local_files_only=offline or is_dir))
        except Exception as e:
            where = "" if is_dir else (" (no such local folder either)" if os.sep in model else "")
            where = f" (prepared from {self.model_name})" if packaged else where
            mode = " with HF_HUB_OFFLINE=1 (only local folders and the local HF cache are searched)" if offline else ""
            raise RuntimeError(
                f"cannot load text model {model!r}{where}{mode}: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}. "
                "To provide it: on a networked machine run `huggingface-cli download roberta-base --local-dir "
                "/path/roberta-base`, copy the folder here and set `model: /path/roberta-base` "
                "(model.text_encoder.init_args.model in the YAML); or unset HF_HUB_OFFLINE where the hub is reachable."
            ) from e
        if len(tokenizer) < MIN_VOCAB:
            raise RuntimeError(f"tokenizer of {model!r} has only {len(tokenizer)} tokens: a broken/offline "
                               "placeholder, not a real tokenizer; provide the model folder (see HF docs) "
                               "and set `model:`")
        if len(tokenizer) > net.config.vocab_size:
            raise RuntimeError(f"{model!r}: tokenizer has {len(tokenizer)} tokens but the model only "
                               f"{net.config.vocab_size} embeddings")
        max_pos = getattr(net.config, "max_position_embeddings", None)
        if max_pos is not None and max_length + 2 > max_pos:  # RoBERTa positions start at pad_id + 1 = 2
            raise ValueError(f"max_length={max_length} too long for {model!r} (max_position_embeddings={max_pos})")
        self.tokenizer = tokenizer
        self.model = net
        self.pooling = _pooling(pooling, Path(model) if is_dir else None, net)
        self.out_dim = int(net.config.hidden_size)  # 768 for roberta-base
        if not pretrained:  # the weights are loaded later: key on them when asked (identity())
            self._source_id = None
        elif is_dir:
            self._source_id = file_identity(Path(model) / _weights_file(Path(model)))
        else:
            self._source_id = f"{model}@{getattr(net.config, '_commit_hash', None)}"
        self._clap_id = None
        if clap_checkpoint is not None:
            state = load_clap_state_dict(clap_checkpoint)
            load_branch(self.model, select_prefix(state, "text_branch."), source=str(clap_checkpoint),
                        target=f"HFTextEncoder(model={model!r}) text_branch")
            self._clap_id = file_identity(clap_checkpoint)
        self._apply_freeze()

    def identity(self) -> str:
        source = self._source_id or f"weights={weights_digest(self.model)}"
        mean = ":pooling=mean" if self.pooling == "mean" else ""
        return f"HFTextEncoder:{source}:max_length={self.max_length}:clap={self._clap_id}{mean}"


def _pooling(pooling: str, folder: Path | None, net: nn.Module) -> str:
    """Resolve ``pooling="auto"`` (HFTextEncoder's docstring)."""
    if pooling != "auto":
        return pooling
    config = folder / "1_Pooling" / "config.json" if folder is not None else None
    if config is not None and config.is_file():
        import json

        if json.loads(config.read_text()).get("pooling_mode_mean_tokens"):
            return "mean"
    return "pooler" if getattr(net, "pooler", None) is not None else "mean"


def _weights_file(folder: Path) -> str:
    for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return name
    return "config.json"


class TinyTextEncoder(TextEncoder):
    """A small randomly initialised RoBERTa + byte-level BPE trained on the run's captions.

    For tests and CPU demos: builds in milliseconds and needs no download. Call
    ``fit_tokenizer(captions)`` (deterministic) or ``load_tokenizer_state(json)`` before encoding.

    Args:
        hidden_size: width of the token features (``out_dim``).
        num_layers: transformer layers.
        num_heads: attention heads (must divide hidden_size).
        intermediate_size: feed-forward width.
        vocab_size: embedding rows and cap on the BPE vocabulary (>= 261 = 256 bytes + 5 specials).
        max_length: captions are truncated to this many tokens including <s> and </s>.
        freeze: no gradients, always eval mode, forward under ``torch.no_grad``.
    """

    def __init__(self, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4, intermediate_size: int = 256,
                 vocab_size: int = 2000, max_length: int = 32, freeze: bool = False):
        super().__init__(max_length, freeze)
        from transformers import RobertaConfig, RobertaModel

        if vocab_size < 256 + len(SPECIAL_TOKENS):  # byte-level BPE always keeps the 256-byte alphabet
            raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
        self.vocab_size = vocab_size
        config = RobertaConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=intermediate_size,
            max_position_embeddings=max_length + 2,  # positions run pad_id+1 .. pad_id+max_length
            type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )
        self.model = RobertaModel(config, add_pooling_layer=True)
        self.out_dim = hidden_size
        self._apply_freeze()

    @property
    def needs_tokenizer_fit(self) -> bool:
        return self.tokenizer is None

    def fit_tokenizer(self, captions: list[str]) -> None:
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()  # add_prefix_space=False, no lowercasing: as RoBERTa
        # BPE counts are order-independent and ties break on the pair itself: same captions -> same merges
        bpe.train_from_iterator(list(captions), vocab_size=self.vocab_size, min_frequency=2,
                                show_progress=False, special_tokens=SPECIAL_TOKENS)
        self.load_tokenizer_state(bpe.to_str())

    def load_tokenizer_state(self, state: str) -> None:
        from tokenizers import Tokenizer
        from tokenizers.processors import RobertaProcessing
        from transformers import PreTrainedTokenizerFast

        backend = Tokenizer.from_str(state)
        ids = [backend.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"tokenizer special tokens {SPECIAL_TOKENS} have ids {ids}, expected 0..4")
        if backend.get_vocab_size() > self.vocab_size:
            raise ValueError(f"tokenizer has {backend.get_vocab_size()} tokens > vocab_size={self.vocab_size}")
        # <s> ... </s>; add_prefix_space must match the ByteLevel pre-tokenizer (off) for offset trimming
        backend.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
        self.tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
            unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=self.max_length,
        )

    def tokenizer_state(self) -> str | None:
        if self.tokenizer is None:
            return None
        from tokenizers import Tokenizer

        # the HF wrapper leaves the last call's truncation/padding on the backend: drop them for a stable JSON
        backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        return backend.to_str()

    def identity(self) -> str:
        tok = self.tokenizer_state()
        tok_id = hashlib.sha1(tok.encode()).hexdigest()[:16] if tok is not None else None
        return f"TinyTextEncoder:weights={weights_digest(self.model)}:tokenizer={tok_id}:max_length={self.max_length}"
