"""``coattn sounds``: build a sound bank (coattn/soundbank.py) from real recordings.

    coattn sounds build data/bank --tuxpaint                       # apt-get download tuxpaint-stamps-default
    coattn sounds build data/bank --tuxpaint path/to/tuxpaint-stamps-default_*.deb   # or an extracted tree
    coattn sounds build data/bank --csv sounds.csv --audio-dir clips/          # columns file,description
    coattn sounds build data/bank --esc50 ESC-50-master/                       # meta/esc50.csv + audio/
    coattn sounds build data/bank --fsd50k FSD50K/ --max-per-label 20          # FSD50K.ground_truth/ + audio
    coattn sounds list data/bank                                               # labels and recordings

Every input problem (a missing CSV column is fatal; a missing, unreadable, silent or too short file,
a spoken word, a non-source) is one entry of BANK/report.json; the last line printed is the summary
``kept N, skipped M (reason n, ...)``. docs/sounds.md describes the rules.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

from coattn.errors import DataError, DataNotFoundError, UserFacingError
from coattn.soundbank import (BuildOptions, Candidate, build_bank, label_of, load_bank, phrase_from_description,
                              phrase_from_name, slug)

TUXPAINT_PACKAGE = "tuxpaint-stamps-default"
STAMPS = Path("usr/share/tuxpaint/stamps")
AUDIO = (".ogg", ".wav", ".flac")
# Stamps whose sound has no source in the picture's description. Patterns match the stamp's path
# under stamps/ without its extension. Kept short on purpose: each entry says why.
TUXPAINT_EXCLUDE = {
    "town/flags/*": "not a sound source: a flag (its sound is an illustration, not the flag)",
    "town/roadsigns/*": "not a sound source: a road sign",
    "military/final-roll-call": "not a sound source: a remembrance line",
    "seasonal/hanukkah/dreydl-*": "not a sound source: the description is a rule of the dreidel game",
}
_LOCALE = re.compile(r"^(.+?)_([a-z]{2,3}(?:_[a-zA-Z]{2,4})?)$")  # dog_fr, 5_zh_tw, x_en_GB


# ---------------------------------------------------------------------------------------------- tuxpaint
def fetch_tuxpaint(cache: Path, log=lambda m: print(m, flush=True)) -> Path:
    """``apt-get download tuxpaint-stamps-default`` into ``cache`` (no root needed); the .deb's path."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{TUXPAINT_PACKAGE}_*.deb"))
    if debs:
        return debs[-1]
    if not shutil.which("apt-get"):
        raise UserFacingError(f"apt-get is not available to download {TUXPAINT_PACKAGE}: pass the .deb or an "
                              "extracted tree with --tuxpaint PATH")
    log(f"coattn sounds: apt-get download {TUXPAINT_PACKAGE} into {cache}")
    res = subprocess.run(["apt-get", "download", TUXPAINT_PACKAGE], cwd=cache, capture_output=True, text=True)
    if res.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:  # a fresh machine's empty package
        log("coattn sounds: apt-get update (the package lists are empty or stale), then again")  # lists
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        res = subprocess.run(["apt-get", "download", TUXPAINT_PACKAGE], cwd=cache, capture_output=True, text=True)
    debs = sorted(cache.glob(f"{TUXPAINT_PACKAGE}_*.deb"))
    if res.returncode != 0 or not debs:
        last = (res.stderr.strip().splitlines() or ["no .deb written"])[-1]
        raise UserFacingError(f"apt-get download {TUXPAINT_PACKAGE} failed ({last}); run `apt-get update` first, "
                              "or pass the .deb with --tuxpaint PATH")
    return debs[-1]


def extract_deb(deb: Path, cache: Path, log=lambda m: print(m, flush=True)) -> Path:
    """The .deb's files under ``cache/<deb name>/`` (``dpkg-deb -x``, or Python's ar + tar readers when
    dpkg-deb is absent); done once: a ``.complete`` marker says the folder is whole."""
    dest = cache / deb.stem
    if (dest / ".complete").is_file():
        return dest
    if dest.exists():
        shutil.rmtree(dest)  # a half-extracted folder of a killed run
    dest.mkdir(parents=True)
    log(f"coattn sounds: extracting {deb.name} into {dest}")
    if shutil.which("dpkg-deb"):
        res = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
        if res.returncode != 0:
            shutil.rmtree(dest, ignore_errors=True)
            raise DataError(f"cannot extract {str(deb)!r} with dpkg-deb: "
                            f"{(res.stderr.strip().splitlines() or ['exit ' + str(res.returncode)])[-1]}")
    else:
        try:
            _extract_deb_python(deb, dest)
        except (OSError, tarfile.TarError, EOFError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise DataError(f"cannot extract {str(deb)!r}: {type(exc).__name__}: {exc}") from None
    (dest / ".complete").write_text(str(deb))
    return dest


def _extract_deb_python(deb: Path, dest: Path) -> None:
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(f"{str(deb)!r} is not a Debian package (no ar header)")
        while len(head := f.read(60)) == 60:
            name, size = head[:16].decode().strip().rstrip("/"), int(head[48:58])
            if name.startswith("data.tar"):
                with tarfile.open(fileobj=f, mode="r|*") as tf:
                    tf.extractall(dest, filter="data")
                return
            f.seek(size + (size & 1), 1)
    raise DataError(f"{str(deb)!r} holds no data.tar member")


def stamps_root(path: Path) -> Path:
    for cand in (path / STAMPS, path / "stamps", path):
        if cand.is_dir() and any(cand.rglob("*.txt")):
            return cand
    raise DataNotFoundError(f"no tuxpaint stamps under {str(path)!r} (expected {STAMPS}/.../<name>.txt)")


def tuxpaint_candidates(root: Path, exclude: dict[str, str]) -> tuple[list[Candidate], Counter]:
    """One candidate per stamp sound ``<name>.ogg|wav``; spoken descriptions (``<name>_desc*``) and
    localised variants (``<name>_<locale>``) are counted in ``ignored``, not candidates."""
    out, ignored = [], Counter()
    for audio in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO and p.is_file()):
        stem = audio.with_suffix("")
        rel = stem.relative_to(root).as_posix()
        txt = stem.with_suffix(".txt")
        if "_desc" in stem.name:
            ignored["spoken description (<name>_desc*)"] += 1
            continue
        m = _LOCALE.match(stem.name)
        if not txt.is_file() and m and any((stem.parent / m.group(1)).with_suffix(e).is_file()
                                           for e in (".txt", ".png", ".svg", *AUDIO)):
            ignored["localised spoken variant (<name>_<locale>)"] += 1
            continue
        description = txt.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip() \
            if txt.is_file() else ""
        c = Candidate(id=slug(rel), path=str(audio), description=description,
                      category=stem.parent.relative_to(root).as_posix().strip("."), source="tuxpaint")
        if rel.split("/")[0] == "symbols":
            c.skip = "spoken word (symbols/: numbers, letters and faces say their name)"
        elif reason := next((r for pat, r in exclude.items() if fnmatch.fnmatch(rel, pat)), None):
            c.skip = reason
        else:
            c.phrase = phrase_from_description(description, stem.name) if description else phrase_from_name(stem.name)
            if c.phrase is None:
                c.skip = "not a sound source: the description is a quotation (the text of a sign)"
        out.append(c)
    return out, ignored


# ---------------------------------------------------------------------------------------------- csv, ESC-50, FSD50K
def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataNotFoundError(f"{str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{str(path)!r} has no column {', '.join(missing)} (columns: "
                            f"{', '.join(reader.fieldnames or [])}; needed: {', '.join(required)})")
        return list(reader)


def _file_candidate(audio: Path, cid: str, description: str, category: str, source: str,
                    phrase: str | None, label: str | None = None) -> Candidate:
    c = Candidate(id=cid, path=str(audio), description=description, category=category, source=source,
                  phrase=phrase, label=label)
    if not audio.is_file():
        c.skip = "missing file"
    return c


def csv_candidates(csv_path: Path, audio_dir: Path) -> list[Candidate]:
    """Columns file, description (required); phrase, label, category (optional: else derived). A description
    that is not a short noun phrase, in a row without a phrase, is skipped (file names are not words here)."""
    out = []
    for row in _rows(csv_path, ("file", "description")):
        name = (row["file"] or "").strip()
        desc = (row["description"] or "").strip()
        phrase = (row.get("phrase") or "").strip().lower() or phrase_from_description(desc, "")  # no name fallback
        out.append(_file_candidate(audio_dir / name, slug(str(Path(name).with_suffix(""))), desc,
                                   (row.get("category") or "").strip(), "csv", phrase,
                                   (row.get("label") or "").strip().lower() or None))
    return out


ESC50_GROUPS = ("animals", "natural soundscapes", "human non-speech", "interior domestic", "exterior urban")


def esc50_candidates(root: Path) -> list[Candidate]:
    """ESC-50: meta/esc50.csv (filename,fold,target,category,...) and audio/*.wav; category -> label."""
    out = []
    for row in _rows(root / "meta" / "esc50.csv", ("filename", "target", "category")):
        target = int(row["target"]) if str(row["target"]).isdigit() else -1
        group = ESC50_GROUPS[target // 10] if 0 <= target < 50 else ""
        phrase = phrase_from_name(row["category"])
        out.append(_file_candidate(root / "audio" / row["filename"], "esc50-" + slug(Path(row["filename"]).stem),
                                   row["category"], group, "esc50", phrase or None,
                                   row["category"].replace("_", " ").lower()))
    return out


SPEECH = re.compile(r"speech|conversation|narration|speaking|singing|chant|whispering", re.I)


def fsd50k_candidates(root: Path) -> list[Candidate]:
    """FSD50K: FSD50K.ground_truth/{dev,eval}.csv (fname,labels,mids[,split]) and FSD50K.{dev,eval}_audio/.
    The label is the first (most specific) of a clip's labels; clips with a speech label are spoken word."""
    out = []
    for part in ("dev", "eval"):
        gt = root / "FSD50K.ground_truth" / f"{part}.csv"
        if part == "eval" and not gt.is_file():
            continue
        for row in _rows(gt, ("fname", "labels")):
            labels = [x for x in row["labels"].split(",") if x]
            audio = root / f"FSD50K.{part}_audio" / f"{row['fname']}.wav"
            c = _file_candidate(audio, f"fsd50k-{part}-{slug(row['fname'])}", row["labels"],
                                "/".join(reversed(labels[1:])), "fsd50k",
                                phrase_from_name(labels[0]) if labels else None,
                                labels[0].replace("_", " ").lower() if labels else None)
            if not c.skip and any(SPEECH.search(x) for x in labels):
                c.skip = "spoken word (a speech label)"
            out.append(c)
    return out


def cap_per_label(cands: list[Candidate], n: int) -> list[Candidate]:
    """At most ``n`` candidates per label (the first ones by id); the rest are reported as skipped."""
    seen: Counter = Counter()
    for c in sorted(cands, key=lambda c: c.id):
        key = c.label or label_of(c.phrase or "")
        if not c.skip and c.phrase:
            seen[key] += 1
            if seen[key] > n:
                c.skip = f"over --max-per-label {n}"
    return cands


# ---------------------------------------------------------------------------------------------- command
def _summary(report: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report["skipped_by_reason"].items(), key=lambda kv: -kv[1]))
    ignored = sum(report["ignored_files"].values())
    return (f"kept {report['kept']} ({report['labels']} labels), skipped {len(report['skipped'])}"
            + (f" ({reasons})" if reasons else "") + (f"; {ignored} spoken/localised files ignored" if ignored else "")
            + f", {report['seconds_elapsed']} s")


def build(a: argparse.Namespace) -> int:
    exclude = dict(TUXPAINT_EXCLUDE) if a.tuxpaint is not None and not a.no_default_exclude else {}
    exclude.update({pat: "excluded by --exclude" for pat in a.exclude})
    ignored: Counter = Counter()
    cache = Path(a.cache_dir).expanduser()
    if a.tuxpaint is not None:
        src = Path(a.tuxpaint) if a.tuxpaint else fetch_tuxpaint(cache)
        if not src.exists():
            raise DataNotFoundError(f"--tuxpaint {str(src)!r} does not exist")
        tree = extract_deb(src, cache) if src.is_file() else src
        cands, ignored = tuxpaint_candidates(stamps_root(tree), exclude)
    elif a.csv:
        if not a.audio_dir:
            raise UserFacingError("--csv needs --audio-dir (the folder its file column is relative to)")
        cands = csv_candidates(Path(a.csv), Path(a.audio_dir))
    elif a.esc50:
        cands = esc50_candidates(Path(a.esc50))
    else:
        cands = fsd50k_candidates(Path(a.fsd50k))
    if a.tuxpaint is None and exclude:
        for c in cands:
            if not c.skip and any(fnmatch.fnmatch(c.id, p) or fnmatch.fnmatch(c.path, p) for p in exclude):
                c.skip = "excluded by --exclude"
    if a.max_per_label:
        cands = cap_per_label(cands, a.max_per_label)
    print(f"coattn sounds: {len(cands)} recordings -> {a.bank}", flush=True)
    report = build_bank(cands, a.bank, BuildOptions(min_seconds=a.min_seconds, max_seconds=a.max_seconds),
                        ignored, log=lambda m: print(m, flush=True))
    print(f"{a.bank}: {_summary(report)}")
    return 0


def list_bank(a: argparse.Namespace) -> int:
    bank = load_bank(a.bank)
    by_label: dict[str, list] = {}
    for s in bank:
        by_label.setdefault(s.label, []).append(s)
    for label, ss in sorted(by_label.items()):
        print(f"{label:32s} {len(ss):3d}  {ss[0].phrase!r}  {', '.join(f'{s.seconds:.2f}s' for s in ss[:6])}")
    print(f"{len(bank)} recordings, {len(by_label)} labels, {sum(s.seconds for s in bank) / 60:.1f} min")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn sounds", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build BANK from one source of recordings")
    b.add_argument("bank", help="output folder (sounds.csv, report.json, audio/)")
    g = b.add_mutually_exclusive_group(required=True)
    g.add_argument("--tuxpaint", nargs="?", const="", metavar="DEB_OR_DIR",
                   help=f"Debian's {TUXPAINT_PACKAGE} (.deb or extracted tree); no value: apt-get download it")
    g.add_argument("--csv", metavar="FILE", help="a CSV with columns file,description [,phrase,label,category]")
    g.add_argument("--esc50", metavar="ROOT", help="ESC-50 (meta/esc50.csv, audio/)")
    g.add_argument("--fsd50k", metavar="ROOT", help="FSD50K (FSD50K.ground_truth/, FSD50K.{dev,eval}_audio/)")
    b.add_argument("--audio-dir", help="with --csv: the folder its file column is relative to")
    b.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip recordings whose stamp path / id / file matches (repeatable)")
    b.add_argument("--no-default-exclude", action="store_true", help="keep the built-in tuxpaint non-sources")
    b.add_argument("--max-per-label", type=int, default=0, help="keep at most N recordings per label (0: all)")
    b.add_argument("--min-seconds", type=float, default=0.1, help="shorter after trimming: skipped (default 0.1)")
    b.add_argument("--max-seconds", type=float, default=30.0, help="longer: cut to this (default 30)")
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "coattn", "sounds")
    b.add_argument("--cache-dir", default=cache,
                   help="where --tuxpaint downloads and extracts the package (default ~/.cache/coattn/sounds)")
    ls = sub.add_parser("list", help="labels, phrases and recordings of BANK")
    ls.add_argument("bank")
    f = sub.add_parser("fetch", help=f"download Debian's {TUXPAINT_PACKAGE} into the cache once; print its path")
    f.add_argument("--cache-dir", default=cache, help="where to keep it (default ~/.cache/coattn/sounds)")
    a = p.parse_args(argv)
    try:
        if a.cmd == "fetch":
            print(fetch_tuxpaint(Path(os.path.expanduser(a.cache_dir)), log=lambda m: print(m, file=sys.stderr)))
            return 0
        return build(a) if a.cmd == "build" else list_bank(a)
    except UserFacingError as exc:  # one line naming the file or option; COATTN_DEBUG=1: the traceback
        if os.environ.get("COATTN_DEBUG"):
            raise
        print(f"coattn: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
