"""Scene metadata of a dataset root: when each event happens, which clip is a clip's order twin, and
which words of a caption name which event. Read by the data modules for the time-binding levers
(docs/time.md); plain Python, no torch.

``<root>/synth_metadata.json`` (``coattn synth`` writes it; the real-sound scenes use the same keys):

    {"development/x.wav": {"events": [{"type": "bell", "count": 2, "sound": "a bell"?, "nouns": [...]?,
                                        "occurrences": [[onset_s, offset_s], ...]}, ...],   # time order
                           "captions": [{"text", "reversed", "count_changed"}, ...],
                           "twin": "development/y.wav" | null}}

A clip's events become ``ClipScene``: its occurrences (event index, onset, offset in seconds) and,
per event, the words that name it (from ``type``, ``sound`` and ``nouns``: "bell" -> bell, bells,
belles...; stop words dropped). ``phrase_spans`` finds those words in a caption: a word names event
e when it is in e's words and in no other event's of the same clip (synonyms shared by two events of
one clip, e.g. "whistle" in "a rising whistle, then a falling whistle", name neither). Captions
that use a word the metadata does not know simply ground fewer events.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

METADATA_FILE = "synth_metadata.json"
STOP_WORDS = frozenset({"a", "an", "the", "of", "and", "with", "in", "on", "at", "to", "some", "sound", "sounds",
                        "noise", "series", "burst", "bursts", "is", "are", "being", "by"})
_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")


@dataclass(frozen=True)
class ClipScene:
    """One clip's events: ``occurrences`` (event index, onset s, offset s) in time order; ``vocab[e]``
    the lower-case words that name event e."""

    occurrences: tuple[tuple[int, float, float], ...]
    vocab: tuple[frozenset[str], ...]

    @property
    def n_events(self) -> int:
        return len(self.vocab)


def read_metadata(root: str | os.PathLike | None) -> dict | None:
    """The parsed ``<root>/synth_metadata.json``, or None when the root has none (or it is unreadable)."""
    if not root:
        return None
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): no scene metadata", path, exc)
        return None
    return meta if isinstance(meta, dict) else None


def _words(text: str) -> set[str]:
    out = set()
    for w in _WORD.findall(str(text).replace("_", " ").lower()):
        if w not in STOP_WORDS:
            out |= {w, w + "s", w + "es"} | ({w[:-1]} if w.endswith("s") and len(w) > 3 else set())
    return out


def event_vocab(event: dict) -> frozenset[str]:
    """Words naming an event: its ``type``, ``sound`` and every entry of ``nouns`` (with plural forms)."""
    names = [event.get("type", ""), event.get("sound", "") or ""]
    nouns = event.get("nouns") or []
    names += [n for item in nouns for n in (item if isinstance(item, (list, tuple)) else [item])]
    vocab: set[str] = set()
    for name in names:
        vocab |= _words(name)
    return frozenset(vocab)


def clip_scene(entry: dict | None) -> ClipScene | None:
    """A metadata entry's ``ClipScene``, or None when its events carry no ``occurrences``."""
    events = entry.get("events") if isinstance(entry, dict) else None
    if not events or not all(isinstance(e, dict) and e.get("occurrences") for e in events):
        return None
    occ = sorted((e, float(on), float(off)) for e, ev in enumerate(events) for on, off in ev["occurrences"])
    occ.sort(key=lambda o: (o[1], o[2]))
    return ClipScene(tuple(occ), tuple(event_vocab(ev) for ev in events))


def split_scenes(meta: dict | None, split_folder: str, fnames: list[str]) -> list[ClipScene | None]:
    """The ``ClipScene`` of each clip of a split (metadata key ``<split_folder>/<fname>``), None where absent."""
    if not meta:
        return [None] * len(fnames)
    return [clip_scene(meta.get(f"{split_folder}/{f}")) for f in fnames]


def split_twins(meta: dict | None, split_folder: str, fnames: list[str]) -> list[int | None]:
    """Position in ``fnames`` of each clip's order twin (metadata ``"twin"``), None where it has none in the
    split. Only mutual pairs count (a's twin is b and b's is a)."""
    if not meta:
        return [None] * len(fnames)
    where = {f"{split_folder}/{f}": i for i, f in enumerate(fnames)}
    raw = [(meta.get(f"{split_folder}/{f}") or {}).get("twin") if isinstance(meta.get(f"{split_folder}/{f}"), dict)
           else None for f in fnames]
    twin = [where.get(t) if isinstance(t, str) else None for t in raw]
    return [j if j is not None and j != i and twin[j] == i else None for i, j in enumerate(twin)]


def phrase_spans(caption: str, scene: ClipScene | None) -> list[tuple[int, int, int]]:
    """(event index, char start, char end) of every word of ``caption`` that names exactly one event of the
    scene (module docstring); [] without a scene."""
    if scene is None:
        return []
    spans = []
    for m in _WORD.finditer(caption):
        owners = [e for e, vocab in enumerate(scene.vocab) if m.group(0).lower() in vocab]
        if len(owners) == 1:
            spans.append((owners[0], m.start(), m.end()))
    return spans


def window_fractions(scene: ClipScene, window_s: float) -> list[tuple[int, float, float]]:
    """Occurrences as fractions of the model's window (onset / window, offset / window), cut to [0, 1];
    occurrences that start after the window are dropped. Frame t of T covers [t / T, (t + 1) / T)."""
    out = []
    for e, on, off in scene.occurrences:
        if on < window_s:
            out.append((e, max(0.0, on / window_s), min(1.0, off / window_s)))
    return out
