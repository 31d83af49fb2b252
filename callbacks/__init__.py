"""Lightning callbacks, each configurable from YAML (``trainer.callbacks: - class_path: callbacks.X``).

    callbacks.WandbSaveConfigCallback  config + provenance into W&B, run id into checkpoints (CLI-wired)
    callbacks.RetrievalExamples        top-k clips for fixed queries: W&B table with audio / JSON + md
    callbacks.AttentionMaps            word x frame co-attention heatmaps per layer: W&B images / PNG
    callbacks.LogFriendlyProgressBar   tqdm in a terminal, sparse lines in log files
"""
from __future__ import annotations

from callbacks.attention_maps import AttentionMaps
from callbacks.progress import LogFriendlyProgressBar
from callbacks.retrieval_examples import RetrievalExamples
from callbacks.wandb_config import WandbSaveConfigCallback

__all__ = ["AttentionMaps", "LogFriendlyProgressBar", "RetrievalExamples", "WandbSaveConfigCallback"]
