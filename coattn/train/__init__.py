"""The Lightning app: the LightningModule and its evaluation, the CLI, checkpoints, run folders,
the feature cache, and the upgrade path of 0.1 artefacts. Built on the library (``coattn``) and
``data_modules`` / ``callbacks``; nothing in the library imports it."""
from __future__ import annotations

from coattn.train.module import CoAttnRetrieval

__all__ = ["CoAttnRetrieval"]
