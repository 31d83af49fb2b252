"""``coattn synth --sounds BANK OUT``: Clotho-layout scenes composed from a bank of real recordings.

    coattn sounds build data/bank --tuxpaint
    coattn synth --sounds data/bank data/scenes --twin-share 0.4 --split-by sound

Each clip holds 2-3 events with distinct labels in sequence, some repeated (count 2-3 for about a
third of the events), separated by gaps, over background noise (white or pink) at a random low level,
at least 20 dB under the quietest event. Its five captions use varied templates built on the bank's
phrases ("a dog, then a cow", "a dog is heard twice before a cow", "first ..., followed by ...",
"... and finally ..."). A share of every split (``--twin-share``) is
made of **order twins**: two clips of one split with the same recordings, counts and crops, in
reverse order, so that only the order tells them apart.

``--split-by`` decides which audio each split may draw from (validation draws like evaluation):
    sound      every label and recording in every split (the default)
    recording  a label with several recordings gives the first half (by id) to development and the
               rest to validation/evaluation; labels with one recording are shared
    crop       the first 60 % of every recording feeds development, the last 40 % validation/evaluation

synth_metadata.json, per clip: "events" [{"type" (label), "count", "sound" (id), "phrase",
"occurrences" [[onset, offset] s, ...],
"crop" [start, end] s of the recording used}], "captions" [{"text", "reversed", "count_changed"}],
"twin" (key of the twin clip or null), "sounds_bank" {"path", "hash"}, "split_by", "noise_level".
Every clip draws from its own ``SeedSequence([seed, split, index])`` (a twin from its partner's plan
and its own sequence): the same seed gives byte-identical files.
"""
from __future__ import annotations

import csv
import io
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from coattn.errors import ConfigError, DataError
from coattn.io import atomic_write_bytes
from coattn.soundbank import Sound, bank_digest, fade, load_bank, wav_bytes

SPLITS = ("development", "validation", "evaluation")  # the same as coattn.tools.synth.SPLITS
SPLIT_BY = ("sound", "recording", "crop")
CROP_TRAIN = 0.6  # --split-by crop: development gets the first 60 % of each recording
REPEAT_P = 0.35  # chance that an event repeats (count 2 or 3)
REPEAT_GAP = (0.15, 0.35)  # seconds of silence between repeats (in a 10 s clip; scaled with --seconds)
MIN_GAP = 0.2  # seconds at least between two events (10 s clip)
MARGIN = 0.02  # share of the clip kept free at either end

# ---------------------------------------------------------------------------------------------- captions
NP_FORMS = {1: ("{p}",), 2: ("{p} twice", "{p} two times"), 3: ("{p} three times", "{p} three times in a row")}
CLAUSE_FORMS = {1: ("{p} is heard", "{p} sounds"), 2: ("{p} is heard twice", "{p} sounds twice"),
                3: ("{p} is heard three times", "{p} sounds three times")}
TEMPLATES_2 = (
    "{A}, then {B}",
    "{A} followed by {B}",
    "first {A}, followed by {B}",
    "{Ac} before {B}",
    "{Ac}, and then {Bc}",
    "{B} after {A}",
    "you hear {A} and then {B}",
    "first {Ac}, then {Bc}",
)
TEMPLATES_3 = (
    "{A}, then {B}, and finally {C}",
    "first {A}, followed by {B}, and finally {C}",
    "{A} followed by {B} and then {C}",
    "{Ac} first, then {B}, and {C} at the end",
    "you hear {A}, next {B}, and lastly {C}",
    "{Ac}, then {Bc}, and finally {Cc}",
    "{C} comes last, after {A} and then {B}",
)
SUFFIXES = ("", "", " over faint background noise", " with a quiet hiss in the background", " in a quiet place")


def _slot(phrase: str, count: int, form: int, clause: bool) -> str:
    forms = (CLAUSE_FORMS if clause else NP_FORMS)[count]
    return forms[form % len(forms)].format(p=phrase)


def _render(template: str, suffix: str, events: list[tuple[str, int, int]]) -> str:
    """``events``: (phrase, count, form) in time order."""
    slots = {}
    for key, (p, c, f) in zip("ABC", events):
        slots[key], slots[key + "c"] = _slot(p, c, f, False), _slot(p, c, f, True)
    text = template.format(**slots) + suffix
    return text[0].upper() + text[1:] + "."


def captions(scene: list[tuple[str, int]], rng: np.random.Generator, n: int = 5) -> list[dict[str, str | None]]:
    """``n`` distinct captions of ``scene`` [(phrase, count)] with the probes ``coattn probe`` reads:
    ``reversed`` (the same words, events in reverse order) and ``count_changed`` (one count moved by one)."""
    templates = TEMPLATES_2 if len(scene) == 2 else TEMPLATES_3
    out: list[dict[str, str | None]] = []
    for _ in range(500):
        template = templates[rng.integers(len(templates))]
        suffix = SUFFIXES[rng.integers(len(SUFFIXES))]
        words = [(p, c, int(rng.integers(6))) for p, c in scene]
        text = _render(template, suffix, words)
        if any(c["text"] == text for c in out):
            continue
        j = int(rng.integers(len(scene)))
        p, c, f = words[j]
        changed = [*words[:j], (p, c + 1 if c < 3 else c - 1, f), *words[j + 1:]]
        out.append({"text": text, "reversed": _render(template, suffix, words[::-1]),
                    "count_changed": _render(template, suffix, changed)})
        if len(out) == n:
            return out
    raise RuntimeError(f"could not write {n} distinct captions for {scene}")


# ---------------------------------------------------------------------------------------------- audio pools
@dataclass(frozen=True)
class Piece:
    """The part [start, end) (samples at the scene rate) of one recording that a split may use."""

    sound: Sound
    start: int
    end: int


def pools(bank: list[Sound], split_by: str, sr: int) -> dict[str, dict[str, list[Piece]]]:
    """split -> label -> pieces it may draw from (module docstring)."""
    if split_by not in SPLIT_BY:
        raise ConfigError(f"--split-by {split_by!r}: expected one of {', '.join(SPLIT_BY)}")
    by_label: dict[str, list[Sound]] = {}
    for s in sorted(bank, key=lambda s: s.id):
        by_label.setdefault(s.label, []).append(s)
    train: dict[str, list[Piece]] = {}
    held: dict[str, list[Piece]] = {}
    for label, sounds in by_label.items():
        whole = [Piece(s, 0, int(round(s.seconds * sr))) for s in sounds]
        if split_by == "sound" or (split_by == "recording" and len(sounds) == 1):
            train[label], held[label] = whole, whole
        elif split_by == "recording":
            k = (len(whole) + 1) // 2
            train[label], held[label] = whole[:k], whole[k:]
        else:
            cut = [int(p.end * CROP_TRAIN) for p in whole]
            train[label] = [replace(p, end=c) for p, c in zip(whole, cut)]
            held[label] = [replace(p, start=c) for p, c in zip(whole, cut)]
    return {"development": train, "validation": held, "evaluation": held}


class AudioCache:
    """Recordings at the scene rate, loaded on first use; the ``size`` most recent kept in memory."""

    def __init__(self, sr: int, size: int = 256):
        self.sr, self.size, self._d = sr, size, OrderedDict()

    def __call__(self, s: Sound) -> np.ndarray:
        if s.id in self._d:
            self._d.move_to_end(s.id)
            return self._d[s.id]
        try:
            x = s.load(self.sr)
        except ValueError as exc:
            raise DataError(f"sound bank file {s.path!r} ({s.id}) cannot be read: {exc}") from None
        self._d[s.id] = x
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return x


# ---------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Event:
    """One event of a scene plan: which recording, how often, which crop of it, how loud."""

    piece: Piece
    count: int
    length: int  # samples of one occurrence
    offset: int  # where the occurrence starts inside the recording
    level: float


def plan(pool: dict[str, list[Piece]], n: int, sr: int, rng: np.random.Generator, audio: AudioCache) -> list[Event]:
    """2 or 3 events with distinct labels (labels drawn uniformly, then one of their pieces)."""
    labels = sorted(pool)
    k = 2 if len(labels) < 3 or rng.random() < 0.5 else 3
    scale = n / (10.0 * sr)  # gaps are given for 10 s clips
    budget = (n * (1 - 2 * MARGIN) - (k - 1) * MIN_GAP * sr * scale) / k  # samples per event, gaps kept aside
    events = []
    for i in rng.choice(len(labels), size=k, replace=False):
        pieces = pool[labels[int(i)]]
        piece = pieces[int(rng.integers(len(pieces)))]
        count = int(rng.integers(2, 4)) if rng.random() < REPEAT_P else 1
        rep_gap = REPEAT_GAP[1] * sr * scale  # the longest gap render() may draw
        room = int((budget - (count - 1) * rep_gap) / count * rng.uniform(0.7, 1.0))
        length = max(16, min(piece.end - piece.start, room))
        offset = _crop(audio(piece.sound), piece, length, rng)
        events.append(Event(piece, count, length, offset, float(rng.uniform(0.35, 0.7))))
    return events


def _crop(x: np.ndarray, piece: Piece, length: int, rng: np.random.Generator, tries: int = 8) -> int:
    """Start of a ``length`` window inside the piece: random, but not in a quiet stretch of a long
    recording (the first of ``tries`` windows within 12 dB of the piece's RMS, else the loudest tried)."""
    span = piece.end - piece.start - length
    if span <= 0:
        return piece.start
    ref = float(np.sqrt(np.mean(np.square(x[piece.start:piece.end], dtype=np.float64))))
    best, best_rms = piece.start, -1.0
    for _ in range(tries):
        o = piece.start + int(rng.integers(0, span + 1))
        rms = float(np.sqrt(np.mean(np.square(x[o:o + length], dtype=np.float64))))
        if rms >= ref / 4:
            return o
        if rms > best_rms:
            best, best_rms = o, rms
    return best


def render(events: list[Event], n: int, sr: int, audio: AudioCache, rng: np.random.Generator
           ) -> tuple[np.ndarray, list[list[list[float]]], float]:
    """(float32 clip, per event its [[onset, offset] s] occurrences, noise RMS); events in sequence."""
    scale = n / (10.0 * sr)
    rep_gaps = [[int(sr * scale * rng.uniform(*REPEAT_GAP)) for _ in range(e.count - 1)] for e in events]
    blocks = [e.count * e.length + sum(g) for e, g in zip(events, rep_gaps)]
    min_gap, margin = int(MIN_GAP * sr * scale), int(MARGIN * n)
    free = n - 2 * margin - sum(blocks) - (len(events) - 1) * min_gap
    if free < 0:
        raise RuntimeError("scene plan does not fit the clip")  # plan() leaves room: a bug if raised
    slots = rng.dirichlet(np.ones(len(events) + 1)) * free  # silence before, between and after the events
    clips = [fade(audio(e.piece.sound)[e.offset:e.offset + e.length], sr) * e.level for e in events]
    # background: a random low level, but at least 20 dB under the quietest event, so that every
    # event the captions name stays audible (a sparse sound, a rustle, has a low RMS for its peak)
    quietest = min(float(np.sqrt(np.mean(np.square(c, dtype=np.float64)))) for c in clips)
    noise_level = min(float(rng.uniform(0.002, 0.01)), quietest / 10)
    noise = _pink(n, rng) if rng.random() < 0.5 else rng.standard_normal(n)  # half the clips: duller pink noise
    x = noise / (noise.std() + 1e-12) * noise_level
    pos = margin + int(slots[0])
    occurrences = []
    for j, (e, gaps, clip) in enumerate(zip(events, rep_gaps, clips)):
        occ = []
        for r in range(e.count):
            x[pos:pos + len(clip)] += clip
            occ.append([round(pos / sr, 4), round((pos + len(clip)) / sr, 4)])
            pos += len(clip) + (gaps[r] if r < len(gaps) else 0)
        occurrences.append(occ)
        pos += min_gap + int(slots[j + 1])
    peak = float(np.abs(x).max())
    if peak > 0.95:
        x *= 0.95 / peak
    return x.astype(np.float32), occurrences, noise_level


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[1:] /= np.sqrt(np.arange(1, len(spec)))
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


def twin_pairs(n: int, share: float, rng: np.random.Generator) -> dict[int, int]:
    """twin index -> primary index: round(n * share / 2) pairs, at random positions of the split."""
    pairs = int(round(n * share / 2))
    perm = rng.permutation(n)
    return {int(max(perm[2 * i], perm[2 * i + 1])): int(min(perm[2 * i], perm[2 * i + 1])) for i in range(pairs)}


def synthesize_from_bank(bank_path: str | Path, out_dir: str | Path, seed: int = 0,
                         counts: dict[str, int] | None = None, seconds: float = 10.0, sample_rate: int = 44100,
                         twin_share: float = 0.4, split_by: str = "sound", log=print) -> dict:
    """Write the dataset (module docstring); returns the summary the CLI prints."""
    if not 0.0 <= twin_share <= 1.0:
        raise ConfigError(f"--twin-share {twin_share}: expected a share between 0 and 1")
    bank = load_bank(bank_path)
    bank_info = {"path": str(Path(bank_path).resolve()), "hash": bank_digest(bank_path)}
    split_pools = pools(bank, split_by, sample_rate)
    if len(split_pools["development"]) < 2:
        raise DataError(f"sound bank {str(bank_path)!r} has {len(split_pools['development'])} label(s): "
                        "scenes need at least 2")
    out, audio = Path(out_dir), AudioCache(sample_rate)
    counts = counts or {"development": 400, "validation": 100, "evaluation": 100}
    n_samples = int(round(seconds * sample_rate))
    t0 = time.perf_counter()
    metadata: dict[str, dict] = {}
    summary = {"out_dir": str(out), "seed": seed, "seconds": seconds, "sample_rate": sample_rate,
               "sounds_bank": bank_info, "split_by": split_by, "twin_share": twin_share, "clips": {}, "twins": {},
               "labels": {s: len(p) for s, p in split_pools.items()}}
    for split_id, split in enumerate(SPLITS):
        n = counts.get(split, 0)
        (out / split).mkdir(parents=True, exist_ok=True)
        twins = twin_pairs(n, twin_share, np.random.default_rng(np.random.SeedSequence([seed, split_id, n, 7])))
        partner = {**twins, **{p: t for t, p in twins.items()}}
        plans: dict[int, list[Event]] = {}
        rows = []
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, i]))
            if i in twins:
                events = plans[twins[i]][::-1]  # the primary has the lower index: already planned
            else:
                events = plan(split_pools[split], n_samples, sample_rate, rng, audio)
            plans[i] = events
            probes = captions([(e.piece.sound.phrase, e.count) for e in events], rng)
            wave, occurrences, noise_level = render(events, n_samples, sample_rate, audio, rng)
            fname = f"{split}_{i:05d}.wav"
            atomic_write_bytes(out / split / fname, wav_bytes(wave, sample_rate))
            rows.append([fname, *(c["text"] for c in probes)])
            metadata[f"{split}/{fname}"] = {
                "events": [{"type": e.piece.sound.label, "count": e.count, "sound": e.piece.sound.id,
                            "phrase": e.piece.sound.phrase, "occurrences": occ,
                            "crop": [round(e.offset / sample_rate, 4), round((e.offset + e.length) / sample_rate, 4)]}
                           for e, occ in zip(events, occurrences)],
                "captions": probes,
                "twin": f"{split}/{split}_{partner[i]:05d}.wav" if i in partner else None,
                "sounds_bank": bank_info, "split_by": split_by, "noise_level": round(noise_level, 5)}
            if (i + 1) % max(1, n // 10) == 0 or i + 1 == n:
                log(f"  {split}: {i + 1}/{n} clips ({time.perf_counter() - t0:.1f} s)")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file_name", *(f"caption_{k}" for k in range(1, 6))])
        w.writerows(rows)
        atomic_write_bytes(out / f"clotho_captions_{split}.csv", buf.getvalue().encode("utf-8"))
        summary["clips"][split], summary["twins"][split] = n, 2 * len(twins)
    atomic_write_bytes(out / "synth_metadata.json", json.dumps(metadata, indent=1, sort_keys=True).encode())
    summary["seconds_elapsed"] = round(time.perf_counter() - t0, 2)
    return summary
