"""Word-by-frame co-attention maps of (caption, clip) pairs: as arrays, and drawn.

    with torch.no_grad():
        examples = attention_examples(model, model.encode_audio(waves), ["a dog barks", "rain"])
    attention_figure(examples[0]).savefig("map.png")

What the training callback (callbacks/attention_maps.py) logs after validation and what
``coattn serve`` shows beside each hit. The pairs go through the cascade under
``coattn.coattention.capture_attention``, which records the guided (cross-modal) attention
weights; heads are averaged:

* ``single`` / ``stacking``: both directions per layer: text->audio (each word attends over the
  32 frames) and audio->text (each frame attends over the words, drawn transposed so every panel
  is words x frames);
* ``iterating``: the audio-queries-text direction of each of the N audio layers (the text stream
  never attends to the audio).

Figures are ``matplotlib.figure.Figure`` objects made without pyplot: no backend is chosen and no
global figure state is touched, so this works in servers, callbacks and notebooks alike.
"""
from __future__ import annotations

import re

import torch

from coattn.coattention import capture_attention
from coattn.features import SequenceFeatures

_LAYER = re.compile(r"^(text|audio)_layers\.(\d+)\.")


def attention_panels(maps: dict[str, list[torch.Tensor]], i: int, n_words: int) -> list[tuple[str, torch.Tensor]]:
    """(title, words x frames) of pair ``i`` per layer and direction, in layer order."""
    items = []
    for name, calls in maps.items():
        m = _LAYER.match(name)
        if not m or not calls:
            continue
        stream, layer = m.group(1), int(m.group(2))
        for c, w in enumerate(calls):  # shared weights: one module called once per layer
            n = layer + c + 1
            a = w[i].float().mean(0).cpu()  # heads averaged: (Lq, Lk)
            if stream == "text":  # words query the frames
                items.append((n, 0, f"layer {n}: text->audio", a[:n_words]))
            else:  # frames query the words: transpose to words x frames
                items.append((n, 1, f"layer {n}: audio->text", a[:, :n_words].t()))
    return [(title, mat) for _, _, title, mat in sorted(items, key=lambda t: (t[0], t[1]))]


@torch.no_grad()
def attention_examples(model, audio: SequenceFeatures, captions: list[str], clips: torch.Tensor | None = None,
                       names: list[str] | None = None) -> list[dict]:
    """``[{caption, fname, tokens, panels}]``: caption ``i`` paired with clip ``clips[i]`` of ``audio``
    (default: clip ``i``). Empty panels for ``cascade: none`` (nothing attends across). Call it with
    the model in eval mode (dropout would change the maps)."""
    device = audio.states.device
    idx = torch.arange(len(captions), device=device)
    clips = idx if clips is None else clips.to(device)
    text = model.encode_text(list(captions))
    maps: dict[str, list[torch.Tensor]] = {}
    if model.has_pairwise:
        with capture_attention(model.cascade, "guided") as maps:
            model.score_pairs(model.prepare_text(text), idx, model.prepare_audio(audio), clips)
    enc = model.text_encoder
    ids = enc.tokenize(list(captions))["input_ids"]
    mask = text.mask.cpu()
    out = []
    for i, cap in enumerate(captions):
        n_words = int(mask[i].sum())
        pieces = enc.tokenizer.convert_ids_to_tokens(ids[i, :n_words].tolist())
        tokens = [t.replace("\u0120", "") or "_" for t in pieces]  # drop byte-level BPE's space marker
        out.append({"caption": cap, "fname": names[i] if names else str(int(clips[i])), "tokens": tokens,
                    "panels": attention_panels(maps, i, n_words)})
    return out


def attention_figure(example: dict, title: str | None = None):
    """All panels of one example side by side (two per row), words down, frames across."""
    from matplotlib.figure import Figure

    panels = example["panels"]
    cols = min(2, len(panels)) or 1
    rows = (len(panels) + cols - 1) // cols
    h = max(1.6, 0.22 * len(example["tokens"]) + 0.9)
    fig = Figure(figsize=(5.2 * cols, h * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, mat) in zip(axes.flat, panels):
        im = ax.imshow(mat.numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set_title(name, fontsize=8)
        ax.set_yticks(range(len(example["tokens"])))
        ax.set_yticklabels(example["tokens"], fontsize=6)
        ax.set_xlabel("audio frame (~0.31 s)", fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(title or f"{example['fname']}: \"{example['caption']}\"", fontsize=8)
    fig.tight_layout()
    return fig
