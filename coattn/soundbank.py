"""A sound bank: real recordings, one sound class each, ready to compose scenes from.

    bank = load_bank("data/bank")                  # list[Sound], from BANK/sounds.csv
    wave = bank[0].load(44100)                     # float32 mono, peak-normalised

Format (docs/sounds.md; shared with the moments branch, which reads it):
    BANK/sounds.csv   id,file,label,phrase,description,category,seconds,sample_rate,source
                      one row per usable recording; ``file`` is relative to BANK (16-bit PCM mono WAV,
                      44.1 kHz, trimmed of leading/trailing silence, peak-normalised to -1 dBFS)
    BANK/report.json  {"kept": N, "skipped": [{"file", "reason"}, ...], ...}

Writing goes through ``build_bank(candidates, BANK)``: each ``Candidate`` (a source file plus its
description, made by the source readers in ``coattn.tools.sounds``) is decoded, checked (unreadable,
silent, too short, an exact duplicate of a kept recording), trimmed, resampled, normalised and written
atomically; every problem is one entry of the report, never a crash. numpy and soundfile only;
torchaudio's resampler is imported only when a recording is not at the bank's rate.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import soundfile as sf

from coattn.errors import DataError, DataNotFoundError
from coattn.io import atomic_write_bytes

SAMPLE_RATE = 44100
FIELDS = ("id", "file", "label", "phrase", "description", "category", "seconds", "sample_rate", "source")
SILENT_PEAK_DB = -60.0  # a decoded file whose peak is below -60 dBFS (or RMS below -80 dBFS) holds no sound
SILENT_RMS_DB = -80.0
TRIM_DB = -40.0  # trimming: 10 ms frames more than 40 dB below the loudest frame are silence
PEAK = 10 ** (-1 / 20)  # normalise to -1 dBFS: headroom for resampling overshoot


@dataclass(frozen=True)
class Sound:
    """One recording of a bank (a row of sounds.csv); ``path`` is the absolute WAV path."""

    id: str
    file: str
    label: str
    phrase: str
    description: str
    category: str
    seconds: float
    sample_rate: int
    source: str
    path: str = field(compare=False)

    def load(self, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """The recording as float32 mono at ``sample_rate``."""
        x, sr = read_mono(self.path)
        return resample(x, sr, sample_rate)


def load_bank(path: str | Path) -> list[Sound]:
    """The sounds of BANK (a folder with sounds.csv, or the csv itself), in file order."""
    p = Path(path).expanduser()
    csv_path = p / "sounds.csv" if p.is_dir() or not p.suffix else p
    if not csv_path.is_file():
        raise DataNotFoundError(f"no sound bank at {str(p)!r}: {str(csv_path)!r} is missing "
                                "(make one with `coattn sounds build BANK --tuxpaint`)")
    root = csv_path.parent.resolve()
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in FIELDS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{str(csv_path)!r} is not a sound bank: columns {missing} are missing "
                            f"(expected {','.join(FIELDS)})")
        out = []
        for i, row in enumerate(reader, start=2):
            try:
                out.append(Sound(**{k: row[k] for k in FIELDS if k not in ("seconds", "sample_rate")},
                                 seconds=float(row["seconds"]), sample_rate=int(row["sample_rate"]),
                                 path=str(root / row["file"])))
            except (TypeError, ValueError) as exc:
                raise DataError(f"{str(csv_path)!r} line {i}: bad seconds/sample_rate ({exc})") from None
    if len({s.id for s in out}) != len(out):
        raise DataError(f"{str(csv_path)!r}: ids are not unique")
    return out


def bank_digest(path: str | Path) -> str:
    """Short SHA-256 of BANK/sounds.csv: which bank (and which version of it) a dataset was made from."""
    p = Path(path)
    return hashlib.sha256((p / "sounds.csv" if p.is_dir() else p).read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- audio
def read_mono(path: str | Path) -> tuple[np.ndarray, int]:
    """(float32 mono samples, rate); channels averaged. Raises ``ValueError`` with a short reason."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile raises LibsndfileError, RuntimeError, OSError...
        raise ValueError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if x.size == 0:
        raise ValueError("no samples")
    if not np.isfinite(x).all():
        raise ValueError("NaN or Inf samples")
    return np.ascontiguousarray(x, dtype=np.float32), int(sr)


def resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    """torchaudio's windowed-sinc resampler (the one the training data path uses); a no-op at ``target``."""
    if sr == target:
        return x
    import torch
    import torchaudio.functional as F

    return F.resample(torch.from_numpy(np.ascontiguousarray(x)), sr, target).numpy().astype(np.float32)


def db(v: float) -> float:
    return float(20 * np.log10(max(v, 1e-12)))


def levels(x: np.ndarray) -> tuple[float, float]:
    """(peak, RMS) in dBFS."""
    return db(float(np.abs(x).max())), db(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))


def trim(x: np.ndarray, sr: int, threshold_db: float = TRIM_DB, pad: float = 0.01) -> np.ndarray:
    """Cut leading and trailing 10 ms frames more than ``threshold_db`` below the loudest frame (and
    below -60 dBFS in any case), keeping ``pad`` seconds either side."""
    hop = max(1, sr // 100)
    n = int(np.ceil(len(x) / hop))
    frames = np.pad(x, (0, n * hop - len(x))).reshape(n, hop)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    loud = np.flatnonzero(rms > max(rms.max() * 10 ** (threshold_db / 20), 10 ** (SILENT_PEAK_DB / 20)))
    if loud.size == 0:
        return x[:0]
    p = int(pad * sr)
    return x[max(0, loud[0] * hop - p):min(len(x), (loud[-1] + 1) * hop + p)]


def fade(x: np.ndarray, sr: int, seconds: float = 0.005) -> np.ndarray:
    """Linear fade-in and fade-out, so that a cut never clicks."""
    k = min(len(x) // 2, int(seconds * sr))
    if k > 0:
        x = x.copy()
        ramp = np.linspace(0.0, 1.0, k, dtype=np.float32)
        x[:k] *= ramp
        x[len(x) - k:] *= ramp[::-1]
    return x


def normalise(x: np.ndarray, peak: float = PEAK) -> np.ndarray:
    return (x * (peak / max(float(np.abs(x).max()), 1e-12))).astype(np.float32)


def wav_bytes(x: np.ndarray, sr: int) -> bytes:
    """16-bit PCM mono WAV."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- words
ARTICLES = ("a", "an", "the")
_WORD = re.compile(r"^[a-z][a-z'-]*$")


def with_article(noun: str) -> str:
    """'dog' -> 'a dog', 'electric kettle' -> 'an electric kettle' (by the first letter: 'a hippopotamus')."""
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def label_of(phrase: str) -> str:
    """The sound class of a phrase: without its article ('a cow' -> 'cow', 'the apollo lander' -> 'apollo lander')."""
    words = phrase.split()
    return " ".join(words[1:] if len(words) > 1 and words[0] in ARTICLES else words)


def phrase_from_name(name: str) -> str:
    """A phrase from a file or class name: 'hard_candy' -> 'a hard candy', 'Electric_guitar' ->
    'an electric guitar'; digits dropped; no article before a plural (-s) or a gerund (-ing) or a mass noun."""
    words = [w for w in re.split(r"[\s_\-.]+", re.sub(r"\d+", " ", name).lower()) if w]
    noun = " ".join(words)
    if not noun:
        return ""
    last, first = words[-1], words[0]
    if (last.endswith("s") and not last.endswith(("ss", "us"))) or (len(words) == 1 and first.endswith("ing")) \
            or last in MASS_NOUNS:
        return noun
    return with_article(noun)


# Nouns that take no article ("rain", not "a rain"): enough for ESC-50's and FSD50K's class names.
MASS_NOUNS = frozenset("rain wind water fire thunder music applause laughter traffic speech snoring breathing "
                       "typing static noise hiss gravel sand rustle chatter".split())
MAX_PHRASE_WORDS = 6
NO_PHRASE = "no usable phrase: the description is not a short noun phrase (a CSV may give a phrase column)"


def phrase_from_description(description: str, name: str) -> str | None:
    """The caption phrase of a one-line description ('A dog.' -> 'a dog', 'An electric kettle.' ->
    'an electric kettle', 'A baby sheep (a lamb).' -> 'a baby sheep'). A description that is not a short
    noun phrase (over 3 words without a leading article, over 6 words, digits, other punctuation) falls
    back to the file's ``name``. None when the description is a quotation (the text of a sign: it names
    no sound source)."""
    text = description.strip()
    if text[:1] in "\"“'‘«":
        return None
    text = re.sub(r"\s*\([^)]*\)", "", text).strip().rstrip(".!").strip().lower()
    words = text.split()
    noun_phrase = words[:1] in (["a"], ["an"], ["the"]) or len(words) <= 3  # "we remember those..." is not
    if noun_phrase and 0 < len(words) <= MAX_PHRASE_WORDS and all(_WORD.match(w) for w in words):
        return with_article(" ".join(words[1:])) if words[0] in ("a", "an") and len(words) > 1 else text
    return phrase_from_name(name) or None


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class Candidate:
    """One input recording, as a source reader found it."""

    id: str
    path: str  # the input file
    description: str
    category: str
    source: str
    phrase: str | None = None  # None: not a usable phrase (then ``skip`` says why)
    label: str | None = None  # default: label_of(phrase)
    skip: str | None = None  # a reason decided before decoding (spoken word, excluded, missing file)


@dataclass
class BuildOptions:
    sample_rate: int = SAMPLE_RATE
    min_seconds: float = 0.1  # after trimming
    max_seconds: float = 30.0  # longer recordings keep their first 30 s (faded out)
    trim_db: float = TRIM_DB


def build_bank(candidates: Iterable[Candidate], out: str | Path, options: BuildOptions | None = None,
               ignored: dict[str, int] | None = None, log: Callable[[str], None] = print) -> dict:
    """Decode, check, trim, resample, normalise and write every candidate; write sounds.csv and
    report.json; return the report. ``ignored``: counts of files the reader passed over on purpose."""
    o = options or BuildOptions()
    root = Path(out)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, skipped, seen = [], [], {}
    cands = sorted(candidates, key=lambda c: c.id)
    for i, c in enumerate(cands):
        reason = c.skip or (None if c.phrase else NO_PHRASE)
        if reason is None:
            reason, row, digest = _one(c, root, o)
            if reason is None and digest in seen:
                reason = f"duplicate: the same audio as {seen[digest]}"
            elif reason is None:
                atomic_write_bytes(root / row.pop("_file"), row.pop("_bytes"))
                seen[digest] = c.id
                rows.append(row)
        if reason is not None:
            skipped.append({"file": c.path, "id": c.id, "reason": reason})
        if (i + 1) % 200 == 0:
            log(f"  {i + 1}/{len(cands)} files ({time.perf_counter() - t0:.1f} s)")
    by_reason: dict[str, int] = {}
    for s in skipped:
        key = s["reason"].split(":")[0].split(" (")[0]
        by_reason[key] = by_reason.get(key, 0) + 1
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(root / "sounds.csv", buf.getvalue().encode("utf-8"))
    report = {"kept": len(rows), "labels": len({r["label"] for r in rows}), "skipped": skipped,
              "skipped_by_reason": by_reason, "ignored_files": dict(ignored or {}),
              "seconds_elapsed": round(time.perf_counter() - t0, 2)}
    atomic_write_bytes(root / "report.json", json.dumps(report, indent=1).encode("utf-8"))
    return report


def _one(c: Candidate, root: Path, o: BuildOptions) -> tuple[str | None, dict, str]:
    """(skip reason or None, the csv row with the WAV bytes to write, digest of the decoded input)."""
    try:
        x, sr = read_mono(c.path)
    except ValueError as exc:
        return f"unreadable: {exc}", {}, ""
    peak, rms = levels(x)
    if peak < SILENT_PEAK_DB or rms < SILENT_RMS_DB:
        return f"silent (peak {peak:.0f} dBFS, RMS {rms:.0f} dBFS)", {}, ""
    digest = hashlib.sha1(np.round(x * 32768).astype(np.int32).tobytes()).hexdigest()
    y = trim(x, sr, o.trim_db)
    if len(y) < o.min_seconds * sr:
        return f"too short ({len(y) / sr:.3f} s of sound after trimming, under {o.min_seconds:g} s)", {}, digest
    if len(y) > o.max_seconds * sr:
        y = y[:int(o.max_seconds * sr)]
    y = normalise(fade(resample(y, sr, o.sample_rate), o.sample_rate))
    rel = f"audio/{c.id}.wav"
    row = {"id": c.id, "file": rel, "label": c.label or label_of(c.phrase or ""), "phrase": c.phrase,
           "description": c.description, "category": c.category, "seconds": f"{len(y) / o.sample_rate:.3f}",
           "sample_rate": o.sample_rate, "source": c.source, "_file": rel, "_bytes": wav_bytes(y, o.sample_rate)}
    return None, row, digest


def slug(text: str) -> str:
    """'animals/mammals/dogs/dog' -> 'animals-mammals-dogs-dog' (ids and file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "sound"


__all__ = ["Sound", "load_bank", "bank_digest", "Candidate", "BuildOptions", "build_bank", "FIELDS",
           "phrase_from_description", "phrase_from_name", "label_of", "with_article", "slug"]
