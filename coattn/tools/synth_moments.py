"""``coattn synth-moments``: long recordings composed from a real sound bank, in the Lighthouse layout.

    coattn synth-moments BANK OUT --seconds 60 --n-train 200 --n-val 50 --n-test 50 --seed 0

BANK is a folder with ``sounds.csv`` (the sound-bank contract: id,file,label,phrase,description,
category,seconds,sample_rate,source; ``coattn sounds build`` makes one). Each recording is
``--seconds`` long: coloured background noise (an ambience bed, -35 to -25 dB below the events) plus
3-5 bank events of distinct labels at random, non-overlapping places (each cut to at most
``--max-event`` s, gains -6..0 dB). Queries, from the bank's ``phrase`` column:

    one event          "a dog"                       -> the window of that event
    a short sequence   "a dog, then a cow"           -> from the first event's start to the second's end
                                                        (two events next to each other in time)

Output (what ``data_modules.MomentDataModule`` reads; the layout of Lighthouse / QVHighlights):
    OUT/audio/{vid}.wav                    16-bit PCM mono at --sample-rate
    OUT/{train,val,test}.jsonl             {"qid", "query", "vid", "duration", "relevant_windows": [[s, e]]}
    OUT/synth_moments.json                 the arguments and, per recording, its events (id, label, window)

A sound may appear in several splits (the bank is small); recordings, compositions and queries do
not. Each recording draws from ``SeedSequence([seed, split, index])``: the same seed, the same files.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from coattn.errors import DataError
from coattn.io import atomic_write_bytes, atomic_write_text

SPLITS = ("train", "val", "test")
BANK_COLUMNS = ("id", "file", "label", "phrase", "description", "category", "seconds", "sample_rate", "source")


def read_bank(bank: Path) -> list[dict]:
    """The rows of BANK/sounds.csv (the contract's columns), with ``path`` absolute."""
    path = bank / "sounds.csv"
    if not path.is_file():
        raise DataError(f"{path}: no sounds.csv in the bank folder; build one with `coattn sounds build`")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id", "file", "label", "phrase") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: columns {missing} missing; expected {','.join(BANK_COLUMNS)}")
        rows = []
        for n, row in enumerate(reader, start=2):
            p = bank / row["file"]
            if not p.is_file():
                raise DataError(f"{path}: line {n} ({row['id']}): audio file {p} is missing; rebuild the bank")
            rows.append({**row, "path": p})
    labels = {r["label"] for r in rows}
    if len(labels) < 3:
        raise DataError(f"{path}: {len(labels)} distinct labels; a recording needs at least 3")
    return rows


def _resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return x
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(x), sr, target).numpy()


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Coloured noise (1/f^beta, beta in [0.5, 2]): a stationary ambience bed, RMS 1."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(len(spec)), 1.0)
    x = np.fft.irfft(spec / f ** (rng.uniform(0.5, 2.0) / 2), n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def compose(sounds: list[dict], waves: dict[str, np.ndarray], seconds: float, sr: int, rng: np.random.Generator,
            max_event: float) -> tuple[np.ndarray, list[dict]]:
    """One recording: (waveform, events in time order with 'start'/'end' in seconds)."""
    n = int(round(seconds * sr))
    by_label: dict[str, list[dict]] = {}
    for s in sounds:
        by_label.setdefault(s["label"], []).append(s)
    k = int(min(rng.integers(3, 6), len(by_label)))
    labels = rng.choice(sorted(by_label), size=k, replace=False)
    picks = [by_label[lab][rng.integers(len(by_label[lab]))] for lab in labels]
    clips = []
    for s in picks:
        w = waves[s["id"]]
        m = min(len(w), int(max_event * sr))
        start = rng.integers(0, len(w) - m + 1)
        clips.append(w[start:start + m] * 10 ** (rng.uniform(-6, 0) / 20))
    # non-overlapping placement: random gaps that share the free time, in random order
    free = max(n - sum(len(c) for c in clips), 0)
    gaps = rng.dirichlet(np.ones(k + 1)) * free
    out = _noise(n, rng) * 10 ** (rng.uniform(-35, -25) / 20)
    t, events = 0.0, []
    for s, c, g in zip(picks, clips, gaps[:k]):
        t += g
        a = int(t)
        c = c[: max(0, n - a)]
        out[a:a + len(c)] += c
        events.append({"id": s["id"], "label": s["label"], "phrase": s["phrase"],
                       "start": round(a / sr, 3), "end": round((a + len(c)) / sr, 3)})
        t = a + len(c)
    peak = np.abs(out).max()
    return (out / peak * 0.9 if peak > 0.9 else out).astype(np.float32), events


def queries_for(events: list[dict], rng: np.random.Generator, n_single: int, n_sequence: int) -> list[dict]:
    """Single-event queries and 'A, then B' queries over consecutive events; windows from the composition."""
    out = []
    for i in rng.permutation(len(events))[:n_single]:
        e = events[i]
        out.append({"query": e["phrase"], "relevant_windows": [[e["start"], e["end"]]]})
    for i in rng.permutation(len(events) - 1)[:n_sequence]:
        a, b = events[i], events[i + 1]
        out.append({"query": f"{a['phrase']}, then {b['phrase']}", "relevant_windows": [[a["start"], b["end"]]]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn synth-moments", description=__doc__.split("\n\n")[0])
    p.add_argument("bank", type=Path, help="sound bank folder (sounds.csv)")
    p.add_argument("out", type=Path)
    p.add_argument("--seconds", type=float, default=60.0, help="length of each recording (30-60 s)")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-val", type=int, default=50)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--sample-rate", type=int, default=32000)
    p.add_argument("--max-event", type=float, default=8.0, help="longest event, in seconds")
    p.add_argument("--single", type=int, default=2, help="single-event queries per recording")
    p.add_argument("--sequence", type=int, default=1, help="'A, then B' queries per recording")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    sounds = read_bank(a.bank)
    waves = {}
    for s in sounds:
        x, sr = sf.read(s["path"], dtype="float32", always_2d=True)
        waves[s["id"]] = _resample(x.mean(1), sr, a.sample_rate)
    (a.out / "audio").mkdir(parents=True, exist_ok=True)
    meta = {"args": {k: str(v) for k, v in vars(a).items()}, "recordings": {}}
    for si, (split, count) in enumerate(zip(SPLITS, (a.n_train, a.n_val, a.n_test))):
        lines = []
        for i in range(count):
            rng = np.random.default_rng(np.random.SeedSequence([a.seed, si, i]))
            wave, events = compose(sounds, waves, a.seconds, a.sample_rate, rng, a.max_event)
            vid = f"{split}_{i:05d}"
            buf = io.BytesIO()
            sf.write(buf, wave, a.sample_rate, format="WAV", subtype="PCM_16")
            atomic_write_bytes(a.out / "audio" / f"{vid}.wav", buf.getvalue())
            meta["recordings"][vid] = events
            for j, q in enumerate(queries_for(events, rng, a.single, a.sequence)):
                lines.append(json.dumps({"qid": f"{vid}_{j}", "query": q["query"], "vid": vid,
                                         "duration": a.seconds, "relevant_windows": q["relevant_windows"]}))
        atomic_write_text(a.out / f"{split}.jsonl", "".join(line + "\n" for line in lines))
        print(f"{split}: {count} recordings, {len(lines)} queries")
    atomic_write_text(a.out / "synth_moments.json", json.dumps(meta, indent=1) + "\n")
    return 0
