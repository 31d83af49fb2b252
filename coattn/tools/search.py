"""``coattn search``: type a sentence, get the matching clips of a folder back, ranked.

    coattn search "a dog barks while rain falls" --ckpt_path runs/demo/checkpoints/best.ckpt \\
        --audio-dir ~/sounds [--top-k 10] [--mode rerank|exact] [--rerank-k 64] [--index-dir DIR]
    coattn search "a dog barks while rain falls" --model exported/demo --audio-dir ~/sounds

1. The model is loaded from the checkpoint (``CoAttnModel.from_checkpoint``: weights only, the
   stored model configuration rebuilds the encoders and the cascade; a bad file is one line) or
   from an exported model folder or Hub id (``--model``: ``CoAttnModel.from_pretrained``, coattn/hub.py).
2. The folder is indexed once: every audio file below it that the data modules read (``.wav``,
   ``.flac``, ``.ogg``, ``.mp3``; recursive, hidden folders skipped) is read like an evaluation clip
   (mono, resampled to the encoder's rate, the first ``clip_seconds`` kept, shorter clips
   repeat-padded: ``coattn.audio``) and encoded into a ``coattn.store.FeatureStore`` (the feature
   cache's store). A later search encodes only files that were added or changed (size,
   modification time or a fingerprint of 3 blocks of their content) and drops removed ones; entries
   whose stored bytes changed since they were written (checksums) are encoded again, with a warning;
   unreadable files are remembered and counted, other files are counted by extension (``not_audio``)
   and reported.
3. The query (never empty) is encoded and scored by the ``Retriever``: the dual encoder shortlists the
   ``--rerank-k`` best clips, the co-attention cascade re-scores them (``--mode rerank``, the
   default; K is raised to ``--top-k`` when smaller), or the cascade scores every clip
   (``--mode exact``). Clips are printed best first with their scores (cosines, in [-1, 1]).

The index (``--index-dir``, default ``$COATTN_INDEX_DIR`` or ``~/.cache/coattn/index``, always
outside the audio folder so read-only folders work) holds ``<sha1 of the folder's path>/<encoder
key>/``, where the key covers the audio encoder's identity and weights, sample rate, input length
and crop: two checkpoints with the same audio encoder share an index. Builds run under an
exclusive lock (``.lock``); every file is written atomically, and a damaged one (a truncated copy,
a full disk, a keys file or ``meta.json`` holding ``[]`` or binary bytes) is reported in one warning
naming it and rebuilt (``FeatureStore``).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coattn.audio import AUDIO_EXTENSIONS
from coattn.features import SequenceFeatures
from coattn.store import FeatureStore, encoder_key, file_key, sha1_of

log = logging.getLogger("coattn.search")



def default_index_root(audio_dir: Path) -> Path:
    base = Path(os.environ.get("COATTN_INDEX_DIR") or Path.home() / ".cache" / "coattn" / "index")
    return base / hashlib.sha1(str(audio_dir.resolve()).encode()).hexdigest()[:16]


def scan_audio(audio_dir: Path, skipped: Counter | None = None) -> list[str]:
    """Paths (relative to ``audio_dir``) of every audio file below it, sorted; ``skipped`` counts the
    other (not hidden) files by extension."""
    out = []
    for root, dirs, files in os.walk(audio_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in files:
            if n.lower().endswith(AUDIO_EXTENSIONS) and not n.startswith("."):
                out.append((Path(root) / n).relative_to(audio_dir).as_posix())
            elif skipped is not None and not n.startswith("."):
                skipped[os.path.splitext(n)[1].lower() or "(no extension)"] += 1
    return sorted(out)


@contextmanager
def _locked(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Index:
    """The readable clips of a folder, in path order, with the audio encoder's outputs."""

    folder: Path  # where the index lives
    files: list[str]
    features: SequenceFeatures
    stats: dict = field(default_factory=dict)  # files / encoded / reused / removed / unreadable counts


def _encode(model, audio_dir: Path, rels: list[str], batch_size: int, device: str):
    """Yield (rels, SequenceFeatures on the CPU, valid) per batch; unreadable files: zeros, valid False."""
    from coattn.audio import AudioReadError, load_clip

    enc = model.audio_encoder
    sr, length, width = int(enc.sample_rate), int(enc.clip_samples), int(enc.out_dim)
    t0 = last = time.perf_counter()
    for b0 in range(0, len(rels), batch_size):
        names = rels[b0:b0 + batch_size]
        waves, ok = [], []
        for rel in names:
            try:
                waves.append(load_clip(audio_dir / rel, sr, length, "start"))
                ok.append(True)
            except AudioReadError as exc:
                log.warning("skipping %s", exc)
                waves.append(torch.zeros(length))
                ok.append(False)
        valid = torch.tensor(ok)
        if valid.any():
            with torch.no_grad():
                feats = model.encode_audio(torch.stack(waves).to(device)).to("cpu", torch.float32)
        else:  # nothing readable in this batch: placeholder rows the index never returns
            feats = SequenceFeatures(torch.zeros(len(names), 1, width), torch.zeros(len(names), 1, dtype=torch.bool),
                                     torch.zeros(len(names), width))
        yield names, feats, valid
        if time.perf_counter() - last > 30:
            last, done = time.perf_counter(), b0 + len(names)
            log.info("indexing: %d/%d clips, about %.0f s left", done, len(rels),
                     (len(rels) - done) / (done / (last - t0)))


def load_model(ckpt_path: str | None, model: str | None, device: str = "cpu"):
    """The model of a ``coattn fit`` checkpoint or of an exported folder / Hub id (exactly one)."""
    from coattn.errors import ConfigError, UserFacingError
    from coattn.model import CoAttnModel

    if (ckpt_path is None) == (model is None):
        raise ValueError("give either --ckpt_path (a checkpoint of `coattn fit`) or --model (an exported folder)")
    if ckpt_path is not None:
        return CoAttnModel.from_checkpoint(ckpt_path, device)
    if Path(model).expanduser().is_dir():
        return CoAttnModel.from_pretrained(model, map_location=device)
    try:
        return CoAttnModel.from_pretrained(model, map_location=device)
    except UserFacingError:
        raise
    except Exception as exc:  # huggingface_hub's errors for an id it cannot fetch (offline, unknown, invalid)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"--model {model!r}: no such folder, and fetching it from the Hugging Face Hub failed "
                          f"({type(exc).__name__}: {first})") from None


def build_index(model, audio_dir: str | os.PathLike, index_dir: str | os.PathLike | None = None,
                batch_size: int = 8, device: str = "cpu") -> Index:
    """Bring the index of ``audio_dir`` up to date (encoding only new or changed files) and load it."""
    audio_dir = Path(audio_dir).expanduser()
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"--audio-dir {audio_dir} is not a folder")
    enc = model.audio_encoder
    meta = {"kind": "audio", **encoder_key(enc), "sample_rate": int(enc.sample_rate),
            "clip_samples": int(enc.clip_samples), "crop": "start", "audio_dir": str(audio_dir.resolve())}
    root = Path(index_dir).expanduser() if index_dir else default_index_root(audio_dir)
    folder = root / sha1_of({k: v for k, v in meta.items() if k != "audio_dir"})[:16]
    with _locked(folder):
        store = FeatureStore(folder, meta)
        other: Counter = Counter()
        rels = scan_audio(audio_dir, other)
        keys = {}
        for rel in rels:
            try:
                keys[rel] = file_key(audio_dir / rel)
            except OSError as exc:  # vanished or unreadable between the scan and the stat
                log.warning("skipping %s: %s", rel, exc)
        store.verify(list(keys.values()))  # entries whose bytes changed are forgotten: encoded again below
        todo = [r for r, k in keys.items() if k not in store]
        store.write_stream((([keys[n] for n in names], feats, valid)
                            for names, feats, valid in _encode(model, audio_dir, todo, batch_size, device)), 1024)
        removed = store.compact(set(keys.values()))
        feats, valid = store.get([keys[r] for r in keys]) if keys else (None, torch.zeros(0, dtype=torch.bool))
    files = [r for r, ok in zip(keys, valid.tolist()) if ok]
    stats = {"files": len(rels), "reused": len(keys) - len(todo), "encoded": len(todo), "removed": removed,
             "unreadable": int((~valid).sum()), "healed": len(store.healed), "not_audio": dict(other)}
    if not files:
        raise ValueError(f"no readable audio files ({', '.join(AUDIO_EXTENSIONS)}) below {audio_dir}")
    log.info("index %s: %d clips (%d encoded, %d reused, %d removed, %d unreadable)%s", folder, len(files),
             stats["encoded"], stats["reused"], stats["removed"], stats["unreadable"],
             f"; {sum(other.values())} other files not indexed (only {', '.join(AUDIO_EXTENSIONS)}): "
             + ", ".join(f"{n} {ext}" for ext, n in other.most_common()) if other else "")
    return Index(folder, files, feats.index(valid.nonzero().squeeze(1)), stats)


@torch.no_grad()
def search(model, index: Index, queries: list[str], top_k: int = 10, mode: str = "rerank", rerank_k: int = 64,
           device: str = "cpu", tile_pairs: int = 16384) -> list[dict]:
    """Ranked clips per query: [{"query", "results": [(rank, score, file)], "cascade_passes"}]."""
    from coattn.metrics import topk
    from coattn.retrieval import Retriever

    retriever = Retriever(mode=mode, rerank_k=max(rerank_k, top_k), tile_pairs=tile_pairs)
    result = retriever(model, index.features.to(device), model.encode_text(list(queries)), both_directions=False)
    passes = result.info.get("cascade_passes", 0) // max(1, len(queries))
    order = topk(result.scores, top_k)
    return [{"query": q, "cascade_passes": passes,
             "results": [(r + 1, float(result.scores[i, j]), index.files[int(j)]) for r, j in enumerate(order[i])]}
            for i, q in enumerate(queries)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", nargs="+", help="one or more queries (quote each sentence)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", help="checkpoint of `coattn fit`")
    src.add_argument("--model", help="exported model folder (`coattn export`) or Hugging Face Hub id")
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
    empty = [i + 1 for i, q in enumerate(args.query) if not q.strip()]
    if empty:  # an empty query still ranks every clip, by nothing: refuse it
        p.error(f"query {empty[0]} of {len(args.query)} is empty; quote one sentence per query, "
                "e.g. coattn search \"a dog barks\" ...")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    from coattn.errors import UserFacingError

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        model = load_model(args.ckpt_path, args.model, device)
        index = build_index(model, args.audio_dir, args.index_dir, args.batch_size, device)
    except (FileNotFoundError, ValueError, UserFacingError) as exc:
        print(f"coattn: error: {exc}", file=sys.stderr)
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
