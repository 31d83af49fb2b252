"""``coattn synth``: a procedurally generated, Clotho-v2.1-layout dataset for demos and tests.

    coattn synth data/demo --seed 0                       # 400/100/100 clips of 10 s: 21 s on 2 shared cores
    coattn synth /tmp/tiny --n-train 6 --n-val 3 --n-eval 3 --seconds 2
    coattn synth --sounds data/bank data/scenes --twin-share 0.4     # real recordings (coattn/tools/scenes.py)

Each clip is a small sound scene: 2-3 synthetic events (12 types, acoustically distinct on a
log-mel spectrogram) placed one after the other, some repeated, over low background noise. The
5 captions name the events, their order and their counts with varied templates and synonyms,
so a retrieval model has to learn *what*, *in which order* and *how many*. With 12 types,
ordered 2-3 event scenes and counts there are 9,260 possible scenes: 100 test clips almost
never share a description, yet each event type is seen hundreds of times in 400 training clips.

Output (what ``data_modules.ClothoDataModule`` reads):
    OUT/development/*.wav  OUT/validation/*.wav  OUT/evaluation/*.wav   (16-bit PCM mono WAV)
    OUT/clotho_captions_{development,validation,evaluation}.csv          (file_name,caption_1..5)
    OUT/synth_metadata.json      per clip: its events in time order (type, count, occurrences [[onset_s,
                                 offset_s], ...], nouns: the words captions use for it) and, per caption,
                                 the compositional probes ``coattn probe`` scores (the same words with
                                 the events reversed; one count changed). Never read in training.

Every clip draws from its own ``SeedSequence([seed, split, index])``: the same seed gives
byte-identical files, and changing ``--n-train`` does not change the validation clips.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from coattn.io import atomic_write_bytes

SPLITS = ("development", "validation", "evaluation")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
TIMES_WORDS = {2: "twice", 3: "three times"}

# ----------------------------------------------------------------------------------------------
# Event generators: (duration in samples, sample rate, rng) -> float64 waveform with peak ~1.
# All vectorised: a 10 s clip costs a few ms.


def _env(n: int, sr: int, attack: float = 0.01, release: float = 0.05) -> np.ndarray:
    """Linear attack/release so that events start and stop without clicks."""
    e = np.ones(n)
    a, r = max(1, min(n // 2, int(attack * sr))), max(1, min(n // 2, int(release * sr)))
    e[:a] = np.linspace(0.0, 1.0, a)
    e[n - r:] = np.linspace(1.0, 0.0, r)
    return e


def _decay(n: int, sr: int, tau: float) -> np.ndarray:
    return np.exp(-np.arange(n) / (tau * sr))


def beep(n, sr, rng):  # steady high sine, 2-3.2 kHz
    t = np.arange(n) / sr
    return np.sin(2 * np.pi * rng.uniform(2000, 3200) * t) * _env(n, sr, 0.005, 0.01)


def hum(n, sr, rng):  # low fundamental 60-110 Hz with 2 harmonics: energy only in the bottom mel bins
    t = np.arange(n) / sr
    f = rng.uniform(60, 110)
    x = np.sin(2 * np.pi * f * t) + 0.5 * np.sin(4 * np.pi * f * t) + 0.25 * np.sin(6 * np.pi * f * t)
    return x / 1.75 * _env(n, sr, 0.15, 0.15)


def siren(n, sr, rng):  # two-tone alternation (e.g. 700/950 Hz) at ~2.5 Hz
    t = np.arange(n) / sr
    lo = rng.uniform(600, 800)
    rate = rng.uniform(2.0, 3.0)
    f = np.where(np.sin(2 * np.pi * rate * t) >= 0, lo, lo * 1.35)
    phase = 2 * np.pi * np.cumsum(f) / sr  # integrate frequency: no phase jumps at the switches
    return np.sin(phase) * _env(n, sr, 0.05, 0.05)


def hiss(n, sr, rng):  # broadband white noise with a slow amplitude wobble ("rain", "static")
    t = np.arange(n) / sr
    wobble = 0.8 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t)
    return rng.standard_normal(n) * 0.35 * wobble * _env(n, sr, 0.1, 0.1)


def footsteps(n, sr, rng):  # 4-7 short low-passed noise transients at a steady ~2/s
    out = np.zeros(n)
    k = int(rng.integers(4, 8))
    step = n // k
    length = min(step, int(0.08 * sr))
    noise = rng.standard_normal((k, length))
    noise = np.cumsum(noise, axis=1) * 0.05  # integrated noise = a dull, low-passed thud
    noise -= noise.mean(axis=1, keepdims=True)
    hit = noise * _decay(length, sr, 0.015)
    for i in range(k):
        out[i * step:i * step + length] += hit[i]
    return out / (np.abs(out).max() + 1e-9)


def rising(n, sr, rng):  # exponential up-chirp 300 Hz -> 3 kHz
    return _chirp(n, sr, rng.uniform(250, 400), rng.uniform(2500, 3500))


def falling(n, sr, rng):  # exponential down-chirp 3 kHz -> 300 Hz
    return _chirp(n, sr, rng.uniform(2500, 3500), rng.uniform(250, 400))


def _chirp(n, sr, f0, f1):
    t = np.arange(n) / sr
    dur = n / sr
    f = f0 * (f1 / f0) ** (t / dur)
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * _env(n, sr, 0.01, 0.03)


def bell(n, sr, rng):  # inharmonic partials (church-bell ratios) with a long decay
    t = np.arange(n) / sr
    f = rng.uniform(500, 900)
    ratios = np.array([1.0, 2.0, 2.4, 3.0, 4.5, 5.3])
    amps = np.array([1.0, 0.6, 0.5, 0.35, 0.25, 0.2])
    x = (amps[:, None] * np.sin(2 * np.pi * f * ratios[:, None] * t)).sum(0)
    return x / amps.sum() * _decay(n, sr, 0.35 * n / sr) * _env(n, sr, 0.002, 0.02)


def buzz(n, sr, rng):  # square wave 120-200 Hz: a dense comb of odd harmonics
    t = np.arange(n) / sr
    return 0.6 * np.sign(np.sin(2 * np.pi * rng.uniform(120, 200) * t)) * _env(n, sr, 0.01, 0.02)


def pluck(n, sr, rng):  # harmonic series whose upper partials die faster (a plucked string)
    t = np.arange(n) / sr
    f = rng.uniform(180, 350)
    k = np.arange(1, 9)[:, None]
    x = (np.sin(2 * np.pi * f * k * t) / k * np.exp(-t * k * 3.0 / (n / sr))).sum(0)
    return x / 1.5 * _env(n, sr, 0.002, 0.02)


def drum(n, sr, rng):  # kick drum: sine sweeping 150 -> 50 Hz with a fast decay
    t = np.arange(n) / sr
    f = 50 + 100 * np.exp(-t / 0.03)
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * _decay(n, sr, 0.12) * _env(n, sr, 0.001, 0.02)


def birdsong(n, sr, rng):  # fast 4 kHz warbles: frequency-modulated at 15-25 Hz, gated in syllables
    t = np.arange(n) / sr
    fc = rng.uniform(3500, 5000)
    f = fc + 800 * np.sin(2 * np.pi * rng.uniform(15, 25) * t)
    gate = (np.sin(2 * np.pi * rng.uniform(4, 7) * t) > 0.2).astype(float)
    gate = np.convolve(gate, np.ones(64) / 64, mode="same")  # soften syllable edges
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * gate * _env(n, sr)


@dataclass(frozen=True)
class EventType:
    """One synthetic event: its generator, typical length, how often it may repeat, its words."""

    name: str
    make: Callable[[int, int, np.random.Generator], np.ndarray]
    seconds: float  # length of one occurrence in a 10 s clip (scaled down for shorter clips)
    max_count: int  # 1 = never repeated (sustained sounds); 3 = "three beeps"
    nouns: tuple[tuple[str, str], ...]  # (singular, plural) synonyms
    adjectives: tuple[str, ...]  # "" = no adjective


EVENTS: tuple[EventType, ...] = (
    EventType("beep", beep, 0.35, 3, (("beep", "beeps"), ("bleep", "bleeps"), ("electronic tone", "electronic tones")),
              ("high-pitched", "short", "sharp", "")),
    EventType("hum", hum, 2.0, 1, (("hum", "hums"), ("drone", "drones"), ("rumble", "rumbles")),
              ("low", "deep", "steady low", "")),
    EventType("siren", siren, 2.0, 1, (("siren", "sirens"), ("alarm", "alarms"), ("two-tone siren", "two-tone sirens")),
              ("wailing", "loud", "")),
    EventType("hiss", hiss, 1.8, 1, (("hiss", "hisses"), ("burst of static", "bursts of static"),
                                      ("rush of rain-like noise", "rushes of rain-like noise")),
              ("loud", "noisy", "")),
    EventType("footsteps", footsteps, 2.2, 1, (("series of footsteps", "series of footsteps"),
                                                ("sequence of knocks", "sequences of knocks"),
                                                ("set of steady thuds", "sets of steady thuds")),
              ("rhythmic", "slow", "")),
    EventType("rising", rising, 0.8, 2, (("rising whistle", "rising whistles"), ("upward sweep", "upward sweeps"),
                                         ("tone sweeping up", "tones sweeping up")), ("quick", "")),
    EventType("falling", falling, 0.8, 2, (("falling whistle", "falling whistles"),
                                           ("downward sweep", "downward sweeps"),
                                           ("tone sweeping down", "tones sweeping down")), ("quick", "")),
    EventType("bell", bell, 1.2, 3, (("bell", "bells"), ("chime", "chimes"), ("ding", "dings")),
              ("ringing", "resonant", "metallic", "")),
    EventType("buzz", buzz, 0.9, 2, (("buzz", "buzzes"), ("buzzer", "buzzers"), ("electric buzz", "electric buzzes")),
              ("harsh", "loud", "")),
    EventType("pluck", pluck, 0.9, 3, (("plucked string", "plucked strings"), ("guitar note", "guitar notes"),
                                       ("twang", "twangs")), ("soft", "bright", "")),
    EventType("drum", drum, 0.4, 3, (("drum hit", "drum hits"), ("thump", "thumps"), ("kick drum", "kick drums")),
              ("heavy", "dull", "")),
    EventType("bird", birdsong, 1.5, 1, (("bird chirping", "birds chirping"), ("birdsong", "birdsongs"),
                                         ("twittering bird", "twittering birds")), ("cheerful", "high", "")),
)

# ----------------------------------------------------------------------------------------------
# Captions


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _wording(event: EventType, count: int, rng: np.random.Generator) -> tuple[int, int, bool]:
    """The random choices of a noun phrase: synonym, adjective, number form ('two beeps') or not."""
    noun, adj = int(rng.integers(len(event.nouns))), int(rng.integers(len(event.adjectives)))
    return noun, adj, bool(count > 1 and rng.random() < 0.5)


def _phrase(event: EventType, count: int, noun: int, adj: int, number_form: bool) -> str:
    singular, plural = event.nouns[noun]
    a = event.adjectives[adj]
    if count == 1:
        return _article(f"{a} {singular}".strip())
    if number_form:
        return f"{NUMBER_WORDS[count]} {a} {plural}".replace("  ", " ")
    verb = {"bell": " ringing", "beep": " sounding", "drum": " hitting"}.get(event.name, "")
    return f"{_article(f'{a} {singular}'.strip())}{verb} {TIMES_WORDS[count]}"


def describe(event: EventType, count: int, rng: np.random.Generator) -> str:
    """One noun phrase for ``count`` occurrences: 'a short beep', 'two beeps', 'a bell ringing twice'."""
    return _phrase(event, count, *_wording(event, count, rng))


TEMPLATES_2 = (
    "{A} followed by {B}",
    "first {A}, then {B}",
    "{B} after {A}",
    "{A} and then {B}",
    "{A}, later {B}",
    "you hear {A} before {B}",
    "{A} can be heard, and afterwards {B}",
    "first comes {A}, and {B} follows",
)
TEMPLATES_3 = (
    "{A}, then {B}, and finally {C}",
    "first {A}, followed by {B} and then {C}",
    "{A} followed by {B}, then {C}",
    "{A} before {B}, and {C} at the end",
    "{A} can be heard, then {B}, and lastly {C}",
    "you hear {A}, next {B}, and then {C}",
)
SUFFIXES = ("", "", "", " over faint background noise", " in a quiet room", " with faint noise in the background")


def make_captions(scene: list[tuple[EventType, int]], rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` different captions of the same scene (templates x synonyms x suffixes)."""
    return [c["text"] for c in make_captions_with_probes(scene, rng, n)]


def make_captions_with_probes(scene: list[tuple[EventType, int]], rng: np.random.Generator,
                              n: int = 5) -> list[dict[str, str | None]]:
    """``n`` different captions of the scene, each with its two compositional probes (CompA-style):
    ``reversed``, the same words with the events in reverse order, and ``count_changed``, one count
    moved by one (None when no event can repeat). Same random draws as the captions alone."""
    templates = TEMPLATES_2 if len(scene) == 2 else TEMPLATES_3
    out: list[dict[str, str | None]] = []
    for _ in range(200):  # thousands of combinations per scene: 5 distinct ones come at once
        words = [_wording(e, c, rng) for e, c in scene]
        template = templates[rng.integers(len(templates))]
        suffix = SUFFIXES[rng.integers(len(SUFFIXES))]
        phrases = [_phrase(e, c, *w) for (e, c), w in zip(scene, words)]

        def render(ps: list[str]) -> str:
            text = template.format(**dict(zip("ABC", ps))) + suffix
            return text[0].upper() + text[1:] + "."

        text = render(phrases)
        if any(c["text"] == text for c in out):
            continue
        counted = next((j for j, (e, _) in enumerate(scene) if e.max_count > 1), None)
        changed = None
        if counted is not None:
            e, c = scene[counted]
            new = c + 1 if c < e.max_count else c - 1
            noun, adj, number_form = words[counted]
            changed = render([*phrases[:counted], _phrase(e, new, noun, adj, number_form or c == 1),
                              *phrases[counted + 1:]])
        out.append({"text": text, "reversed": render(phrases[::-1]), "count_changed": changed})
        if len(out) == n:
            return out
    raise RuntimeError(f"could not write {n} distinct captions for {[e.name for e, _ in scene]}")


# ----------------------------------------------------------------------------------------------
# Scenes


def make_scene(rng: np.random.Generator) -> list[tuple[EventType, int]]:
    """2 or 3 distinct event types in time order, each with a count in 1..max_count."""
    k = 2 if rng.random() < 0.5 else 3
    kinds = rng.choice(len(EVENTS), size=k, replace=False)
    scene = []
    for i in kinds:
        e = EVENTS[int(i)]
        # Counts > 1 for a third of the countable events: enough "twice" to learn, not every clip.
        count = int(rng.integers(2, e.max_count + 1)) if e.max_count > 1 and rng.random() < 0.35 else 1
        scene.append((e, count))
    return scene


def render(scene: list[tuple[EventType, int]], seconds: float, sr: int, rng: np.random.Generator,
           timings: list | None = None) -> np.ndarray:
    """Place the events in consecutive time segments; return float32 in [-1, 1]. ``timings`` (a list) receives
    each event's occurrences, [[onset_s, offset_s], ...] (same random draws either way)."""
    n = int(round(seconds * sr))
    scale = seconds / 10.0  # event lengths are given for 10 s clips
    # Background: white noise at -40 dBFS-ish, so no clip is digitally silent.
    x = rng.standard_normal(n) * rng.uniform(0.003, 0.012)
    margin = int(0.03 * n)
    seg = (n - 2 * margin) // len(scene)
    for j, (event, count) in enumerate(scene):
        seg_start = margin + j * seg
        gap = int(0.12 * sr * scale)  # 0.12 s between repeats: counts stay audible as separate onsets
        occ = int(min(event.seconds * sr * scale * rng.uniform(0.8, 1.2), (seg - (count + 1) * gap) / count))
        occ = max(occ, 16)
        slack = seg - count * occ - (count - 1) * gap
        pos = seg_start + int(rng.integers(0, max(1, slack)))
        level = rng.uniform(0.3, 0.6)
        if timings is not None:
            timings.append([])
        for _ in range(count):
            x[pos:pos + occ] += level * event.make(occ, sr, rng)
            if timings is not None:
                timings[-1].append([round(pos / sr, 4), round(min(pos + occ, n) / sr, 4)])
            pos += occ + gap
    peak = np.abs(x).max()
    if peak > 0.95:
        x *= 0.95 / peak
    return x.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Writing


def _wav_bytes(wave: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def synthesize(out_dir: str | Path, seed: int = 0, counts: dict[str, int] | None = None, seconds: float = 10.0,
               sample_rate: int = 44100, log=print) -> dict:
    """Write the dataset; returns the summary also printed by the CLI."""
    out = Path(out_dir)
    counts = counts or {"development": 400, "validation": 100, "evaluation": 100}
    t0 = time.perf_counter()
    metadata: dict[str, dict] = {}
    scenes_seen: set[tuple] = set()
    summary = {"out_dir": str(out), "seed": seed, "seconds": seconds, "sample_rate": sample_rate,
               "event_types": [e.name for e in EVENTS], "clips": {}}
    for split_id, split in enumerate(SPLITS):
        n = counts.get(split, 0)
        (out / split).mkdir(parents=True, exist_ok=True)
        rows = []
        step = max(1, n // 10)
        for i in range(n):
            rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, i]))
            scene = make_scene(rng)
            probes = make_captions_with_probes(scene, rng)
            captions = [c["text"] for c in probes]
            timings: list = []
            wave = render(scene, seconds, sample_rate, rng, timings)
            fname = f"{split}_{i:05d}.wav"
            atomic_write_bytes(out / split / fname, _wav_bytes(wave, sample_rate))
            rows.append([fname, *captions])
            key = tuple((e.name, c) for e, c in scene)
            scenes_seen.add(key)
            metadata[f"{split}/{fname}"] = {"events": [{"type": e.name, "count": c, "occurrences": t,
                                                        "nouns": [w for pair in e.nouns for w in pair]}
                                                       for (e, c), t in zip(scene, timings)],
                                            "captions": probes}
            if (i + 1) % step == 0 or i + 1 == n:
                log(f"  {split}: {i + 1}/{n} clips ({time.perf_counter() - t0:.1f} s)")
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file_name", *(f"caption_{k}" for k in range(1, 6))])
        writer.writerows(rows)
        atomic_write_bytes(out / f"clotho_captions_{split}.csv", buf.getvalue().encode("utf-8"))
        summary["clips"][split] = n
    atomic_write_bytes(out / "synth_metadata.json", json.dumps(metadata, indent=1, sort_keys=True).encode())
    summary["distinct_scenes"] = len(scenes_seen)
    summary["seconds_elapsed"] = round(time.perf_counter() - t0, 2)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn synth", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder (created; existing files with the same names are replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=400, help="clips in development/ (default 400)")
    p.add_argument("--n-val", type=int, default=100, help="clips in validation/ (default 100)")
    p.add_argument("--n-eval", type=int, default=100, help="clips in evaluation/ (default 100)")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10 s, CLAP's input length)")
    p.add_argument("--sample-rate", type=int, default=44100, help="Clotho's rate; the loader resamples to 48 kHz")
    p.add_argument("--sounds", metavar="BANK", help="compose scenes from this sound bank (`coattn sounds build`) "
                   "instead of synthetic events")
    p.add_argument("--twin-share", type=float, help="with --sounds: share of every split made of order twins "
                   "(same sounds and counts, reverse order; default 0.4)")
    p.add_argument("--split-by", choices=("sound", "recording", "crop"),
                   help="with --sounds: what keeps development and evaluation audio apart (default sound)")
    a = p.parse_args(argv)
    if min(a.n_train, a.n_val, a.n_eval) < 0 or a.seconds < 0.5 or a.sample_rate < 8000:
        p.error("need counts >= 0, --seconds >= 0.5 and --sample-rate >= 8000")
    if a.sounds:
        return _from_bank(a)
    if a.twin_share is not None or a.split_by is not None:
        p.error("--twin-share and --split-by need --sounds BANK")
    print(f"coattn synth: writing to {a.out_dir} (seed {a.seed})", flush=True)
    s = synthesize(a.out_dir, a.seed, {"development": a.n_train, "validation": a.n_val, "evaluation": a.n_eval},
                   a.seconds, a.sample_rate, log=lambda m: print(m, flush=True))
    total = sum(s["clips"].values())
    print(f"done: {total} clips ({', '.join(f'{k} {v}' for k, v in s['clips'].items())}) of {a.seconds:g} s at "
          f"{a.sample_rate} Hz, {len(EVENTS)} event types, {s['distinct_scenes']} distinct scenes, "
          f"5 captions per clip, {s['seconds_elapsed']} s")
    return 0


def _from_bank(a: argparse.Namespace) -> int:
    from coattn.errors import UserFacingError
    from coattn.tools.scenes import synthesize_from_bank

    print(f"coattn synth: scenes from {a.sounds} -> {a.out_dir} (seed {a.seed})", flush=True)
    try:
        s = synthesize_from_bank(a.sounds, a.out_dir, a.seed, {"development": a.n_train, "validation": a.n_val,
                                 "evaluation": a.n_eval}, a.seconds, a.sample_rate,
                                 0.4 if a.twin_share is None else a.twin_share, a.split_by or "sound",
                                 log=lambda m: print(m, flush=True))
    except UserFacingError as exc:  # a missing or broken bank: one line (COATTN_DEBUG=1: the traceback)
        if os.environ.get("COATTN_DEBUG"):
            raise
        print(f"coattn: error: {exc}", file=sys.stderr)
        return 1
    print(f"done: {sum(s['clips'].values())} clips ({', '.join(f'{k} {v}' for k, v in s['clips'].items())}) of "
          f"{a.seconds:g} s at {a.sample_rate} Hz from {s['sounds_bank']['path']} (split by {s['split_by']}), "
          f"order twins {', '.join(f'{k} {v}' for k, v in s['twins'].items())}, 5 captions per clip, "
          f"{s['seconds_elapsed']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
