"""Moments on the search page (``coattn serve`` with a moment model): where in each hit the query happens.

A moment model (a moment checkpoint of ``coattn fit``, or its ``coattn export`` folder: moment.json) ranks
the clips with its CoAttnModel as any model does; then each hit's recording is indexed once (the sliding
tower, kept in memory) and the query localised on it (``MomentModel.localize``). The page shows the clip's
waveform (a min/max envelope) with the best window shaded and its times, as a PNG drawn with Agg.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_moment_source(ckpt_path: str | None, model: str | None):
    """The MomentModel of a moment checkpoint / exported moment folder, or None for any other model."""
    from coattn.moments.folder import is_moment_folder, load_moment_folder

    if model is not None and Path(model).expanduser().is_dir() and is_moment_folder(Path(model).expanduser()):
        return load_moment_folder(Path(model).expanduser())
    if ckpt_path is not None and Path(ckpt_path).is_file():
        from coattn.io import load_checkpoint

        meta = load_checkpoint(ckpt_path, mmap=True)
        if any(k.startswith("mm.head.") for k in meta.get("state_dict", {})):
            from coattn.tools.localize import load_moment_checkpoint

            return load_moment_checkpoint(ckpt_path)
    return None


class MomentView:
    """Indices of the served clips (built on first view) and the waveform image of a query's best window."""

    def __init__(self, mm, device: str = "cpu"):
        self.mm, self.device = mm.to(device).eval(), device
        self._cache: dict[str, tuple[object, np.ndarray]] = {}

    def _load(self, path: Path):
        from coattn.audio import load_audio

        key = str(path)
        if key not in self._cache:
            wave = load_audio(path, self.mm.sample_rate)
            with torch.no_grad():
                index = self.mm.index(wave.to(self.device))
            self._cache[key] = (index, wave.numpy())
        return self._cache[key]

    @torch.no_grad()
    def window(self, path: Path, query: str) -> tuple[float, float, float] | None:
        index, _ = self._load(path)
        out = self.mm.localize(index, query, 1)
        return tuple(float(x) for x in out[0].tolist()) if len(out) else None

    def image(self, path: Path, query: str) -> tuple[np.ndarray, tuple[float, float, float] | None]:
        """RGB pixels of the waveform with the best window shaded, and that window (start s, end s, score)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from coattn.tools.localize import clock

        _, wave = self._load(path)
        best = self.window(path, query)
        sr = self.mm.sample_rate
        bins = 1200
        step = max(1, len(wave) // bins)
        n = len(wave) // step * step
        env = wave[:n].reshape(-1, step) if n else wave[None, :]
        t = (np.arange(env.shape[0]) + 0.5) * step / sr
        fig = Figure(figsize=(7.2, 1.6), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
        ax.fill_between(t, env.min(1), env.max(1), color="#4a6fa5", linewidth=0)
        if best is not None:
            s, e, score = best
            ax.axvspan(s, e, color="#f2a541", alpha=0.45, linewidth=0)
            ax.set_title(f"\u201c{query}\u201d: {clock(s)} - {clock(e)} (score = {score:.2f})", fontsize=9)
        ax.set_xlim(0, len(wave) / sr)
        ax.set_xlabel("seconds", fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        canvas = FigureCanvasAgg(fig)  # Agg: no display, no pyplot
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy(), best
