"""``coattn predict``: the embeddings and encoder features of a dataset, written once per run.

    coattn predict --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt

Runs the data module's predict split (the test split) through the encoders. ``predict_step``
returns, per batch, the dual-encoder embeddings with the clip names and captions (what
``trainer.predict`` hands back); at the end of the epoch ``<default_root_dir>/results/predict/``
(or ``model.results_dir``) receives, each written atomically (temp file + ``os.replace``):

    embeddings.npz  clip_embeddings (M, E) and caption_embeddings (N, E), float32, L2-normalised
                    dual-encoder vectors (cosine = dot product: s_dual); fnames (M,), captions (N,),
                    caption_clip (N,) = row of each caption's clip in fnames, clip_index (M,) =
                    index of each clip in its split
    features.npz    the encoder outputs the co-attention stage starts from: clip_states (M, T, Da),
                    clip_mask (M, T), clip_pooled (M, Da), caption_states (N, L, Dt),
                    caption_mask (N, L), caption_pooled (N, Dt); same order as embeddings.npz

Under DDP every rank's items are gathered (sampler repeats removed) and rank 0 writes.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from coattn.features import SequenceFeatures


def predict_step(module, batch: dict) -> dict:
    """Encode one batch, keep its features for the epoch's files, return its embeddings."""
    m = module.model
    audio, text = module.encode(batch)
    acc = module.__dict__.setdefault("_predict", {})
    acc.setdefault("audio", []).append(audio)
    acc.setdefault("text", []).append(text)
    acc.setdefault("clip_index", []).append(batch["clip_index"])
    acc.setdefault("caption_clip", []).append(batch["caption_clip"])
    acc.setdefault("fnames", []).extend(batch["fnames"])
    acc.setdefault("captions", []).extend(batch["captions"])
    return {"clip_embeddings": m.dual_embed_audio(audio).float().cpu(),
            "caption_embeddings": m.dual_embed_text(text).float().cpu(),
            "fnames": list(batch["fnames"]), "captions": list(batch["captions"]),
            "clip_index": batch["clip_index"].cpu(), "caption_clip": batch["caption_clip"].cpu()}


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    from coattn.atomic import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    data = _npz_bytes(arrays)
    atomic_write_bytes(path, data)


@torch.no_grad()
def on_predict_epoch_end(module) -> dict[str, Path] | None:
    """Gather (DDP), then rank 0 writes embeddings.npz and features.npz. Returns their paths."""
    from coattn.distributed import gather_eval

    acc = module.__dict__.pop("_predict", None)
    if not acc:
        return None
    acc = gather_eval(acc)
    if not module.trainer.is_global_zero:
        return None
    m = module.model
    audio, text = SequenceFeatures.cat(acc["audio"]), SequenceFeatures.cat(acc["text"])
    clip_index = torch.cat(acc["clip_index"])
    row_of = torch.full((int(clip_index.max()) + 1,), -1, dtype=torch.long, device=clip_index.device)
    row_of[clip_index] = torch.arange(len(clip_index), device=clip_index.device)
    caption_clip = row_of[torch.cat(acc["caption_clip"])]
    out = Path(module.results_dir or Path(module.trainer.default_root_dir) / "results" / "predict")
    np_ = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    paths = {"embeddings": out / "embeddings.npz", "features": out / "features.npz"}
    write_npz(paths["embeddings"], {
        "clip_embeddings": np_(m.dual_embed_audio(audio)), "caption_embeddings": np_(m.dual_embed_text(text)),
        "fnames": np.array(acc["fnames"], dtype=str), "captions": np.array(acc["captions"], dtype=str),
        "caption_clip": caption_clip.cpu().numpy(), "clip_index": clip_index.cpu().numpy()})
    write_npz(paths["features"], {
        "clip_states": np_(audio.states), "clip_mask": audio.mask.cpu().numpy(), "clip_pooled": np_(audio.pooled),
        "caption_states": np_(text.states), "caption_mask": text.mask.cpu().numpy(),
        "caption_pooled": np_(text.pooled)})
    print(f"predictions written to {out}: {len(acc['fnames'])} clips, {len(acc['captions'])} captions "
          "(embeddings.npz, features.npz)")
    return paths
