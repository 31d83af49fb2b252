"""``coattn search``: type a sentence, get the matching clips of a folder back, ranked.

    coattn search "a dog barks while rain falls" --ckpt_path runs/demo/checkpoints/best.ckpt \\
        --audio-dir ~/sounds [--top-k 10] [--mode rerank|exact] [--rerank-k 64] [--index-dir DIR]

1. The model is loaded from the checkpoint (``CoAttnRetrieval.load_from_checkpoint`` with
   ``weights_only=True``: tensors and plain containers only, no pickled code; the LightningCLI
   config stored in the checkpoint rebuilds the encoders and the cascade).
2. The folder is indexed once: every ``.wav``/``.flac``/``.ogg`` file below it (recursive, hidden
   folders skipped) is read with the data modules' audio path (mono, resampled to the encoder's
   rate, the first ``clip_seconds`` kept, shorter clips repeat-padded: ``coattn.audio``)
   and encoded; the audio encoder's outputs are stored in the index. A later search re-encodes
   only files that were added or changed (size or modification time) and forgets removed ones.
3. The query is encoded, the dual encoder shortlists the ``--rerank-k`` best clips (one matrix
   product), the co-attention cascade re-scores the shortlist (``--mode rerank``, the default;
   K is raised to ``--top-k`` when smaller), or scores every clip (``--mode exact``). The clips
   are printed best first with their scores (cascade cosine similarities, in [-1, 1]).

The index (``--index-dir``, default ``$COATTN_INDEX_DIR`` or ``~/.cache/coattn/index``, always
outside the audio folder so read-only folders work and nothing is written next to the user's
files) holds ``<sha1 of the folder's absolute path>/<encoder key>/``: ``manifest.json`` (file ->
size, mtime, shard, row) and ``shard-*.npz`` (frames, mask, pooled vector per file). The encoder
key is a digest of the audio encoder's weights, sample rate and input length: two checkpoints
with the same audio encoder share an index; a retrained one gets a new index. Every file is
written atomically (temp file + ``os.replace``) under an exclusive lock (``.lock``), so
concurrent searches and interrupted runs never leave a half-written index.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from coattn.atomic import atomic_write_bytes

log = logging.getLogger("coattn.search")

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
MANIFEST_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Model


def load_model(ckpt_path: str | os.PathLike, device: str = "cpu"):
    """The ``CoAttnModel`` of a ``coattn fit`` checkpoint, in eval mode, loaded with weights_only=True."""
    from coattn.module import CoAttnRetrieval

    module = CoAttnRetrieval.load_from_checkpoint(str(ckpt_path), map_location=device, weights_only=True)
    return module.model.to(device).eval()


def encoder_key(model) -> str:
    from coattn.encoders.clap_checkpoint import weights_digest

    enc = model.audio_encoder
    ident = f"{type(enc).__name__}:{weights_digest(enc)}:{getattr(enc, 'sample_rate', '?')}:" \
            f"{getattr(enc, 'clip_samples', '?')}:crop=start"
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Index


def default_index_root(audio_dir: Path) -> Path:
    base = Path(os.environ.get("COATTN_INDEX_DIR") or Path.home() / ".cache" / "coattn" / "index")
    return base / hashlib.sha1(str(audio_dir.resolve()).encode()).hexdigest()[:16]


def scan_audio(audio_dir: Path) -> list[tuple[str, int, int]]:
    """(path relative to ``audio_dir``, size, mtime_ns) of every audio file below it, sorted."""
    out = []
    for root, dirs, files in os.walk(audio_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or not name.lower().endswith(AUDIO_EXTENSIONS):
                continue
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((path.relative_to(audio_dir).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(out)


@contextmanager
def _locked(folder: Path):
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Index:
    """The indexed clips of a folder: relative paths and the audio encoder's outputs, in path order."""

    folder: Path  # where the index lives
    files: list[str]
    states: torch.Tensor  # (M, T, D)
    mask: torch.Tensor  # (M, T)
    pooled: torch.Tensor  # (M, D)
    stats: dict = field(default_factory=dict)  # encoded / reused / removed / failed counts

    def features(self, device="cpu"):
        from coattn.features import SequenceFeatures
        return SequenceFeatures(self.states, self.mask, self.pooled).to(device)


def _encode_files(model, audio_dir: Path, rels: list[str], batch_size: int, device: str):
    """Encode ``rels``: (features dict of the readable ones, their rels, {rel: error} of the rest)."""
    from coattn.audio import AudioReadError, load_clip

    enc = model.audio_encoder
    sr, length = int(enc.sample_rate), int(enc.clip_samples)
    ok, errors = [], {}
    states, masks, pooled = [], [], []
    show = sys.stderr.isatty() and len(rels) > batch_size
    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(rels), unit="clip", desc="indexing", leave=False)
    t0 = last = time.perf_counter()
    for b0 in range(0, len(rels), batch_size):
        waves, names = [], []
        for rel in rels[b0:b0 + batch_size]:
            try:
                waves.append(load_clip(audio_dir / rel, sr, length, "start"))
                names.append(rel)
            except AudioReadError as exc:
                errors[rel] = str(exc)
                log.warning("skipping %s", exc)
        if waves:
            with torch.no_grad():
                f = model.encode_audio(torch.stack(waves).to(device))
            states.append(f.states.float().cpu())
            masks.append(f.mask.cpu())
            pooled.append(f.pooled.float().cpu())
            ok.extend(names)
        done = min(len(rels), b0 + batch_size)
        if bar is not None:
            bar.update(done - b0)
        elif time.perf_counter() - last > 30:
            last = time.perf_counter()
            rate = done / (last - t0)
            log.info("indexing: %d/%d clips, about %.0f s left", done, len(rels), (len(rels) - done) / rate)
    if bar is not None:
        bar.close()
    if not ok:
        return None, ok, errors
    return {"states": torch.cat(states).numpy(), "mask": torch.cat(masks).numpy(),
            "pooled": torch.cat(pooled).numpy()}, ok, errors


def build_index(model, audio_dir: str | os.PathLike, index_dir: str | os.PathLike | None = None,
                batch_size: int = 8, device: str = "cpu") -> Index:
    """Bring the index of ``audio_dir`` up to date (encoding only new or changed files) and load it."""
    audio_dir = Path(audio_dir).expanduser()
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"--audio-dir {audio_dir} is not a folder")
    root = Path(index_dir).expanduser() if index_dir else default_index_root(audio_dir)
    folder = root / encoder_key(model)
    with _locked(folder):
        manifest_path = folder / "manifest.json"
        old: dict = {}
        if manifest_path.is_file():
            try:
                m = json.loads(manifest_path.read_text(encoding="utf-8"))
                if m.get("version") == MANIFEST_VERSION:
                    old = m["files"]
            except (json.JSONDecodeError, KeyError):
                log.warning("unreadable index manifest %s: rebuilding the index", manifest_path)
        scanned = scan_audio(audio_dir)
        files: dict = {}
        todo = []
        for rel, size, mtime in scanned:
            entry = old.get(rel)
            if entry and entry["size"] == size and entry["mtime_ns"] == mtime and \
                    ("error" in entry or (folder / entry["shard"]).is_file()):
                files[rel] = entry
            else:
                todo.append((rel, size, mtime))
        stats = {"files": len(scanned), "reused": len(files), "encoded": 0, "failed": 0,
                 "removed": len(set(old) - {r for r, _, _ in scanned})}
        if todo:
            meta = {rel: (size, mtime) for rel, size, mtime in todo}
            arrays, ok, errors = _encode_files(model, audio_dir, [r for r, _, _ in todo], batch_size, device)
            if arrays is not None:
                shard = f"shard-{uuid.uuid4().hex[:12]}.npz"
                import io
                buf = io.BytesIO()
                np.savez(buf, **arrays)
                atomic_write_bytes(folder / shard, buf.getvalue())
                for row, rel in enumerate(ok):
                    files[rel] = {"size": meta[rel][0], "mtime_ns": meta[rel][1], "shard": shard, "row": row}
            for rel, err in errors.items():
                files[rel] = {"size": meta[rel][0], "mtime_ns": meta[rel][1], "error": err}
            stats["encoded"], stats["failed"] = len(ok), len(errors)
        if todo or stats["removed"] or not manifest_path.is_file():
            manifest = {"version": MANIFEST_VERSION, "audio_dir": str(audio_dir.resolve()),
                        "encoder_key": folder.name, "files": dict(sorted(files.items()))}
            atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode("utf-8"))
            live = {e["shard"] for e in files.values() if "shard" in e}
            for p in folder.glob("shard-*.npz"):  # shards no file points to any more
                if p.name not in live:
                    p.unlink(missing_ok=True)
        # load, in path order
        names = [r for r in sorted(files) if "shard" in files[r]]
        by_shard: dict[str, list[int]] = {}
        for i, r in enumerate(names):
            by_shard.setdefault(files[r]["shard"], []).append(i)
        states = mask = pooled = None
        for shard, idx in by_shard.items():
            with np.load(folder / shard) as z:
                rows = [files[names[i]]["row"] for i in idx]
                s, mk, pl = z["states"][rows], z["mask"][rows], z["pooled"][rows]
            if states is None:
                states = np.zeros((len(names),) + s.shape[1:], s.dtype)
                mask = np.zeros((len(names),) + mk.shape[1:], bool)
                pooled = np.zeros((len(names),) + pl.shape[1:], pl.dtype)
            states[idx], mask[idx], pooled[idx] = s, mk, pl
    if states is None:
        raise ValueError(f"no readable audio files ({', '.join(AUDIO_EXTENSIONS)}) below {audio_dir}")
    log.info("index %s: %d clips (%d encoded, %d reused, %d removed, %d unreadable)", folder, len(names),
             stats["encoded"], stats["reused"], stats["removed"], stats["failed"])
    return Index(folder, names, torch.from_numpy(states), torch.from_numpy(mask), torch.from_numpy(pooled), stats)


# ----------------------------------------------------------------------------------------------
# Search


@torch.no_grad()
def search(model, index: Index, queries: list[str], top_k: int = 10, mode: str = "rerank", rerank_k: int = 64,
           device: str = "cpu", tile_pairs: int = 16384) -> list[dict]:
    """Ranked clips per query: [{"query", "results": [(rank, score, file)], "cascade_passes"}]."""
    from coattn.rerank import top_k_stable
    from coattn.scoring import score_matrix, score_rows

    audio = index.features(device)
    text = model.encode_text(list(queries))
    m = len(index.files)
    dual = model.dual_embed_text(text) @ model.dual_embed_audio(audio).t()  # (Q, M)
    if not model.has_pairwise:
        scores, cols, passes = dual.float(), None, 0
    elif mode == "exact":
        scores = score_matrix(model, model.prepare_text(text), model.prepare_audio(audio), tile_pairs)
        cols, passes = None, m
    elif mode == "rerank":
        cols = top_k_stable(dual, max(rerank_k, top_k))  # (Q, K)
        scores = score_rows(model, model.prepare_text(text), model.prepare_audio(audio), cols, tile_pairs=tile_pairs)
        passes = cols.shape[1]
    else:
        raise ValueError(f"mode must be 'rerank' or 'exact', got {mode!r}")
    out = []
    for q in range(len(queries)):
        order = torch.argsort(scores[q], descending=True, stable=True)[:top_k]
        clip = order if cols is None else cols[q][order]
        out.append({"query": queries[q], "cascade_passes": passes,
                    "results": [(r + 1, float(scores[q, o]), index.files[int(c)])
                                for r, (o, c) in enumerate(zip(order.tolist(), clip.tolist()))]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="+", help="one or more queries (quote each sentence)")
    p.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", required=True, help="checkpoint of `coattn fit`")
    p.add_argument("--audio-dir", required=True, help="folder of audio files to search (recursive)")
    p.add_argument("--top-k", type=int, default=10, help="clips printed per query (default 10)")
    p.add_argument("--mode", choices=["rerank", "exact"], default="rerank",
                   help="rerank: dual-encoder shortlist re-scored by the cascade (default); "
                        "exact: the cascade scores every clip")
    p.add_argument("--rerank-k", type=int, default=64, help="shortlist length of --mode rerank (default 64)")
    p.add_argument("--index-dir", default=None,
                   help="where the index lives (default $COATTN_INDEX_DIR or ~/.cache/coattn/index/<folder hash>)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per encoder batch while indexing")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    if args.top_k < 1 or args.rerank_k < 1:
        p.error("--top-k and --rerank-k must be >= 1")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if not Path(args.ckpt_path).is_file():
        print(f"coattn search: checkpoint {args.ckpt_path} not found", file=sys.stderr)
        return 2
    model = load_model(args.ckpt_path, device)
    try:
        index = build_index(model, args.audio_dir, args.index_dir, args.batch_size, device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"coattn search: {exc}", file=sys.stderr)
        return 2
    results = search(model, index, args.query, args.top_k, args.mode, args.rerank_k, device)
    if args.json:
        print(json.dumps({"index": {"folder": str(index.folder), **index.stats}, "mode": args.mode,
                          "rerank_k": args.rerank_k, "queries": results}, indent=1))
        return 0
    for r in results:
        how = "exact" if args.mode == "exact" else f"rerank K={max(args.rerank_k, args.top_k)}"
        print(f'\n"{r["query"]}"  ({len(index.files)} clips, {how}: {r["cascade_passes"]} cascade passes)')
        for rank, score, f in r["results"]:
            print(f"{rank:4d}  {score:+.4f}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
