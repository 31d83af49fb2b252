"""``RngState``: the global random states (torch, CUDA, numpy, Python) in every checkpoint.

Lightning 2.6 does not save them, so a resumed run would draw different dropout masks than the
uninterrupted one. Saved as tensors and plain values (loadable with ``weights_only=True``) and
restored when a fit resumes (``load_state_dict`` runs while Lightning restores the training
state, before the next epoch draws anything). The data order does not depend on them: the
sampler is seeded per epoch (``data_modules.datasets.EpochSampler``). Under DDP every rank receives
rank 0's states; ranks are seeded alike by ``seed_everything`` and consume them in lockstep.
On by default under ``coattn fit`` (``coattn.train.cli``).
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback


def collect_rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss": py_gauss},
    }


def set_rng_states(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


class RngState(Callback):
    """Save the global RNG states with each checkpoint; restore them when ``fit`` resumes."""

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            set_rng_states(state_dict["rng"])
