"""The model card (``README.md``) of an exported model folder: what the model is, its cascade,
the data and command it was trained with, its test metrics with confidence intervals, its licence
and how to load it.

    coattn export --ckpt_path runs/demo/checkpoints/best.ckpt exported/demo --license mit

``MODEL_CARD`` is the Jinja template huggingface_hub's ``ModelCard.from_template`` renders (the
mixin's ``model_card_template``); ``describe(config)`` fills the architecture part from
``config.json`` (every save has it), ``training(ckpt, ...)`` the rest from the run folder, where
``coattn fit`` left ``logs/*/coattn_config.yaml`` and ``run_info.json`` and ``coattn test`` left
``results/test/metrics.json``. The metrics are used only when ``metrics.json`` names this checkpoint
(or when ``--metrics`` names the file): a card must not show another checkpoint's numbers.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_CARD = """---
{{ card_data }}
---

# {{ model_name | default("coattn retrieval model", true) }}

A [coattn](https://arxiv.org/abs/2412.20914) model for **language-based audio retrieval**: type a
description of a sound, get the clips that match it, ranked. {{ summary | default("", true) }}

## Architecture

| part | configuration |
|---|---|
{% for part, value in architecture | default([], true) %}| {{ part }} | {{ value }} |
{% endfor %}
Audio input: mono, {{ sample_rate | default("48000", true) }} Hz, {{ clip_seconds | default("10", true) }} s per clip
(longer clips are cut, shorter ones repeat-padded). The full configuration is `config.json`.

## Training

{{ training | default("Not recorded: this folder was saved from Python, not exported from a run folder.", true) }}

## Test results

{{ metrics | default("No test metrics were found for this checkpoint (run `coattn test` on it, "
                     ~ "then export again).", true) }}

## How to use

```python
from pathlib import Path
import torch
from coattn import CoAttnModel, Retriever, load_clip

model = CoAttnModel.from_pretrained("{{ repo_id | default("path/to/this/folder", true) }}")  # a folder or a Hub id
paths, enc = sorted(Path("sounds").glob("*.wav")), model.audio_encoder
with torch.no_grad():
    audio = model.encode_audio(torch.stack([load_clip(p, enc.sample_rate, enc.clip_samples) for p in paths]))
    text = model.encode_text(["a dog barks while rain falls"])
scores = Retriever(mode="rerank")(model, audio, text, both_directions=False).scores   # (1, clips)
```

Or from the command line: `coattn search "a dog barks" --model FOLDER --audio-dir SOUNDS` and
`coattn serve --model FOLDER --audio-dir SOUNDS` (a search page in the browser).

## Licence

{{ license_text | default("Not set. Mind the licences of the training data.", true) }}

## Provenance

{{ provenance | default("Saved with `CoAttnModel.save_pretrained`.", true) }}
"""

CASCADES = {
    "none": "no co-attention: a dual encoder (one cosine between pooled, projected encoder outputs)",
    "single": "one bidirectional guided-attention layer between words and audio frames",
    "stacking": "stacked bidirectional guided-attention layers (both streams updated in parallel)",
    "iterating": "the text refined by self-attention, then guiding every audio layer (MCAN encoder-decoder)",
}


def _args(spec: dict) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in (spec.get("init_args") or {}).items() if v is not None)
    return f"`{spec['class_path'].rsplit('.', 1)[-1]}({args})`"


def describe(config: dict) -> dict[str, Any]:
    """Template fields from a ``config.json`` (coattn.hub.architecture): summary and architecture rows."""
    cascade = config["cascade"].get("init_args") or {}
    kind = cascade.get("kind", "iterating")
    rows = [("audio encoder", _args(config["audio_encoder"])), ("text encoder", _args(config["text_encoder"])),
            ("co-attention cascade", _args(config["cascade"]) + f": {CASCADES.get(kind, kind)}"),
            ("joint space", f"{config.get('embed_dim')}-d; dual branch: {config.get('dual_pooling')} pooling, "
                            f"{config.get('dual_projection')} projection; feature_norm={config.get('feature_norm')}")]
    pair = "re-scores every (caption, clip) pair with the cascade" if kind != "none" else "scores with the dual encoder"
    audio = config.get("audio_input") or {}
    return {"summary": f"Cascade `{kind}`: the model {pair}.", "architecture": rows,
            "sample_rate": audio.get("sample_rate"),
            "clip_seconds": f"{audio['clip_samples'] / audio['sample_rate']:g}" if audio.get("sample_rate") else None}


def metrics_table(report: dict) -> str:
    """Markdown table of a ``metrics.json`` of ``coattn test``: value, 95 % CI and chance, in %."""
    metrics, ci, chance = report.get("metrics", {}), report.get("ci", {}), report.get("chance", {})

    def fmt(name: str, v: float) -> str:
        return f"{v:.2f}" if name.endswith(("medR", "meanR")) else f"{100 * v:.2f}"

    lines = ["| metric | value | 95 % CI | chance |", "|---|---|---|---|"]
    for name, v in metrics.items():
        lo_hi = ci.get(name)
        interval = f"[{fmt(name, lo_hi[0])}, {fmt(name, lo_hi[1])}]" if lo_hi else "-"
        lines.append(f"| {name} | {fmt(name, v)} | {interval} | {fmt(name, chance[name]) if name in chance else '-'} |")
    counts, extra = report.get("counts", {}), report.get("extra", {})
    lines.append("")
    lines.append(f"Values in % (ranks as ranks) on {counts.get('n_captions', '?')} captions x "
                 f"{counts.get('n_clips', '?')} clips, scored `{extra.get('retrieval_mode', '?')}`; "
                 f"{report.get('ci_method', 'confidence intervals')}. From `metrics.json` of `coattn test` "
                 f"on `{extra.get('ckpt_path', '?')}`.")
    return "\n".join(lines)


def _same_checkpoint(recorded: str | None, ckpt: Path) -> bool:
    """Whether a path recorded by ``coattn test`` (maybe relative to where it ran) is ``ckpt``."""
    if not recorded:
        return False
    rec = Path(recorded)
    if rec.is_absolute() or rec.exists():
        return rec.exists() and os.path.samefile(rec, ckpt)
    parts = ckpt.resolve().parts  # relative to a folder we do not know: compare the trailing parts
    return parts[-len(rec.parts):] == rec.parts


def run_folder(ckpt: Path) -> Path | None:
    """``<run>`` of ``<run>/checkpoints/<name>.ckpt`` (the layout of every coattn config), else None."""
    return ckpt.resolve().parent.parent if ckpt.resolve().parent.name == "checkpoints" else None


def training(ckpt: str | os.PathLike, checkpoint: dict, run_dir: str | os.PathLike | None = None,
             metrics: str | os.PathLike | None = None) -> dict[str, str]:
    """Template fields ``training`` and ``metrics`` for a checkpoint (module docstring)."""
    import yaml

    ckpt = Path(ckpt)
    run = Path(run_dir) if run_dir else run_folder(ckpt)
    lines = [f"- steps: {checkpoint.get('global_step', '?')} optimiser steps, {int(checkpoint.get('epoch', -1)) + 1} "
             f"epoch(s) (checkpoint `{ckpt.name}`)"]
    configs = sorted(run.rglob("coattn_config.yaml"), key=lambda p: p.stat().st_mtime) if run and run.is_dir() else []
    fits = [p for p in configs if p.read_text(encoding="utf-8").startswith("# coattn fit config")]
    if fits:  # the newest `coattn fit` of the run folder
        cfg = yaml.safe_load(fits[-1].read_text(encoding="utf-8")) or {}
        data = cfg.get("data") or {}
        args = data.get("init_args") or {}
        root = Path(str(args.get("root", "?"))).name
        augment = f", paraphrase augmentation p={args.get('augment_prob')}" if args.get("augmentation_file") else ""
        lines.append(f"- data: `{data.get('class_path', '?')}`, folder `{root}`, one training item per "
                     f"{args.get('train_items', '?')}{augment}")
        info_path = fits[-1].parent / "run_info.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text(encoding="utf-8"))
            argv = ["coattn", *info.get("argv", [])[1:]]  # argv[0] is the script; secrets are already redacted
            git = info.get("git") or {}
            lines.append(f"- command: `{' '.join(argv)}`")
            lines.append(f"- code: git {git.get('sha')}{' (dirty work tree)' if git.get('dirty') else ''}, "
                         f"packages {', '.join(f'{k} {v}' for k, v in (info.get('packages') or {}).items() if v)}")
    else:
        lines.append(f"- the run's configuration (`logs/*/coattn_config.yaml`) was not found next to `{ckpt.name}`")
    out = {"training": "\n".join(lines)}
    path = Path(metrics) if metrics else (run / "results" / "test" / "metrics.json" if run else None)
    if path is not None and path.is_file():
        report = json.loads(path.read_text(encoding="utf-8"))
        recorded = (report.get("extra") or {}).get("ckpt_path")
        if metrics or _same_checkpoint(recorded, ckpt):
            out["metrics"] = metrics_table(report)
        else:
            log.warning("%s belongs to another checkpoint (%s): not put in the model card (pass --metrics to force)",
                        path, recorded)
    return out
