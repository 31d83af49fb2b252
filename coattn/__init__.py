"""coattn: language-based audio retrieval with co-attention networks (the library).

    from coattn import CoAttnModel, Retriever, load_clip
    model = CoAttnModel.from_pretrained("exported/demo")     # or .from_checkpoint("runs/demo/checkpoints/best.ckpt")
    audio = model.encode_audio(torch.stack([load_clip(p, 48000, 480000) for p in paths]))
    scores = Retriever(mode="rerank")(model, audio, model.encode_text(["a dog barks"])).scores

The package has three rooms that import only downwards: the library (the modules directly in
``coattn/`` and its ``encoders/`` and ``retrieval/``: torch only, no Lightning), the Lightning app
(``coattn/train/``, with ``data_modules/`` and ``callbacks/``) and the tools (``coattn/tools/``);
``coattn/cli.py`` is the command that dispatches to them. Names are imported on first use, so
``import coattn`` stays cheap (``coattn synth`` does not load torch models).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_API = {
    "CoAttnModel": "coattn.model",
    "CoAttentionCascade": "coattn.coattention",
    "capture_attention": "coattn.coattention",
    "attention_examples": "coattn.attention_maps",
    "attention_figure": "coattn.attention_maps",
    "SequenceFeatures": "coattn.features",
    "PreparedText": "coattn.features",
    "PreparedAudio": "coattn.features",
    "Batch": "coattn.batch",
    "ClapAudioEncoder": "coattn.encoders",
    "HFTextEncoder": "coattn.encoders",
    "TinyTextEncoder": "coattn.encoders",
    "RetrievalLoss": "coattn.loss",
    "Temperature": "coattn.loss",
    "nt_xent": "coattn.loss",
    "Retriever": "coattn.retrieval",
    "Retrieval": "coattn.retrieval",
    "retrieval_metrics": "coattn.metrics",
    "multi_relevance_metrics": "coattn.relevance",
    "read_relevance": "coattn.relevance",
    "load_audio": "coattn.audio",
    "load_clip": "coattn.audio",
    "FeatureStore": "coattn.store",
    "UserFacingError": "coattn.errors",
    "ConfigError": "coattn.errors",
    "DataError": "coattn.errors",
    "CheckpointError": "coattn.errors",
    "NonFiniteError": "coattn.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'coattn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
