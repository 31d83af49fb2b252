"""``coattn data-check``: scan a dataset copy before training on it.

    coattn data-check clotho /data/clotho --report runs/clotho_check.json
    coattn data-check audiocaps /data/audiocaps --arg file_template='Y{youtube_id}.wav' --workers 2
    coattn data-check wavcaps /data/WavCaps --splits train --rates 32000

Reads the caption files exactly as the data module does (``--arg key=value`` passes any
data-module option), then opens every listed clip. Prints one table (problems x splits) and
writes a JSON report with every finding (file, csv line, detail) plus ``<report>.exclude.txt``:
the clips training cannot use, ready for ``data.init_args.exclude_file``.

Severity: *error* = the clip or the split cannot be used (unsafe name, unreadable, zero-length,
NaN/Inf, a caption file without rows); *warning* = suspicious but usable or already skipped
(missing, not a file, a name that matches a file only up to case / Unicode form / spaces, silent,
out of range, unusual rate/channels, very short, duplicate rows, empty captions, one caption on
several clips); *info* = audio files no caption file lists. A caption file that cannot be read
(bad encoding, missing column, an unterminated quote swallowing rows) is reported for its split.
Exit status 1 when there are errors (or warnings with ``--strict``), else 0.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import unicodedata
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from coattn.audio import AUDIO_EXTENSIONS

SEVERITY = {
    "no_rows": "error", "unsafe_name": "error", "unreadable": "error", "zero_length": "error", "nan_inf": "error",
    "missing": "warning", "not_a_file": "warning", "name_mismatch": "warning", "silent": "warning",
    "out_of_range": "warning", "unusual_sample_rate": "warning", "unusual_channels": "warning",
    "very_short": "warning", "duplicate_rows": "warning", "empty_captions": "warning", "shared_captions": "warning",
    "unlisted_audio": "info",
}
EXCLUDE_KINDS = ("unreadable", "zero_length", "nan_inf")  # unsafe names are refused by the loaders anyway


def probe(path: str, silence_dbfs: float = -60.0) -> dict:
    """Open one clip and measure what the checks need; never raises."""
    import soundfile as sf

    try:
        info = sf.info(path)
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # any decoder failure is a finding, not a crash
        return {"path": path, "error": f"{type(exc).__name__}: {exc}"}
    out = {"path": path, "sample_rate": int(sr), "channels": int(info.channels), "frames": int(data.shape[0])}
    if data.size:
        finite = np.isfinite(data)
        out["non_finite"] = int((~finite).sum())
        peak = float(np.abs(np.where(finite, data, 0.0)).max())
        out["peak_dbfs"] = round(20 * np.log10(peak), 1) if peak > 0 else float("-inf")
        out["silent"] = peak == 0 or out["peak_dbfs"] < silence_dbfs
        out["peak"] = peak
    return out


def _what_is(path: Path) -> str | None:
    """What stands at ``path`` when it is not a regular file (None: nothing, i.e. missing)."""
    if path.is_symlink() and not path.exists():
        return f"a broken symlink (to {os.readlink(path)})"
    if path.is_dir():
        return "a directory, not an audio file"
    if path.exists():
        return "not a regular file (a device, socket or pipe)"
    return None


def _loose(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold().strip()


def _near_miss(name: str, on_disk: str) -> str:
    """How ``name`` (from a caption file) differs from ``on_disk`` when they match loosely."""
    if unicodedata.normalize("NFC", name) == unicodedata.normalize("NFC", on_disk):
        form = "NFD" if unicodedata.is_normalized("NFD", on_disk) else "another form"
        return f"differs only by Unicode normalisation (on disk: {form}): {on_disk!r}"
    if name.strip() == on_disk.strip():
        return f"differs only by leading/trailing spaces: {on_disk!r}"
    if name.casefold() == on_disk.casefold():
        return f"differs only by case: {on_disk!r}"
    return f"differs only by case, spaces or Unicode form: {on_disk!r}"


def _probe_star(args):
    return probe(*args)


def check_split(dm, name: str, rates: set[int], max_channels: int, silence_dbfs: float, min_seconds: float,
                workers: int, one_row_per_clip: bool) -> dict:
    """All findings of one split: {"problems": {kind: [finding]}, "stats": {...}}."""
    from data_modules.splits import UnsafePathError, resolve_in_root

    source = dm.split_source(name)
    problems: dict[str, list[dict]] = {k: [] for k in SEVERITY}
    row_counts = Counter((f, tuple(c)) for f, c, _ in source.rows)
    file_rows = Counter(f for f, _, _ in source.rows)
    seen_dup: set = set()
    reported: set[str] = set()
    to_probe: dict[str, int] = {}  # path -> first csv line
    root_resolved = source.audio_dir.resolve()
    if not source.rows:
        problems["no_rows"].append({"file": str(source.csv), "line": 1,
                                    "detail": "the caption file has a header but no rows: this split is empty"})
    clips_of: dict[str, set[str]] = {}
    for fname, captions, line in source.rows:
        for c in captions:
            if c.strip():
                clips_of.setdefault(c.strip(), set()).add(fname)
    for caption, clips in clips_of.items():  # a false negative for the contrastive loss, every epoch
        if len(clips) > 1:
            problems["shared_captions"].append({"file": sorted(clips)[0], "detail": f"{caption[:80]!r} describes "
                                                f"{len(clips)} clips (e.g. {sorted(clips)[:3]})"})
    loose: dict[str, dict[str, str]] = {}  # folder -> loose name -> name on disk
    for fname, captions, line in source.rows:
        key = (fname, tuple(captions))
        if (row_counts[key] > 1 or (one_row_per_clip and file_rows[fname] > 1)) and fname not in seen_dup:
            seen_dup.add(fname)
            problems["duplicate_rows"].append({"file": fname, "line": line, "detail": f"{file_rows[fname]} rows"})
        for k, c in enumerate(captions):
            if not c.strip():
                problems["empty_captions"].append({"file": fname, "line": line, "detail": f"caption {k + 1} empty"})
        if fname in reported:  # one finding per clip, at its first row
            continue
        try:
            path = resolve_in_root(source.audio_dir, fname, root_resolved)
        except UnsafePathError as exc:
            reported.add(fname)
            problems["unsafe_name"].append({"file": fname, "line": line, "detail": str(exc)})
            continue
        if not path.is_file():
            reported.add(fname)
            what = _what_is(path)
            folder = path.parent
            if what is None and folder.is_dir():
                if str(folder) not in loose:
                    loose[str(folder)] = {_loose(e.name): e.name for e in os.scandir(folder)}
                match = loose[str(folder)].get(_loose(path.name))
                if match is not None:
                    problems["name_mismatch"].append({"file": fname, "line": line, "detail": _near_miss(path.name,
                                                                                                        match)})
                    continue
            if what is None:
                problems["missing"].append({"file": fname, "line": line})
            else:
                problems["not_a_file"].append({"file": fname, "line": line, "detail": what})
            continue
        to_probe.setdefault(str(path), line)
    # unlisted audio: in the folder, in no row (a wrong template or a stale copy)
    listed = {os.path.normpath(p) for p in to_probe}
    if source.audio_dir.is_dir():
        for entry in sorted(os.scandir(source.audio_dir), key=lambda e: e.name):
            if os.path.splitext(entry.name)[1].lower() in AUDIO_EXTENSIONS and \
                    os.path.normpath(entry.path) not in listed and entry.name not in file_rows:
                problems["unlisted_audio"].append({"file": entry.name})
    jobs = [(p, silence_dbfs) for p in to_probe]
    if workers > 1 and len(jobs) > 16:
        with get_context("fork" if sys.platform != "win32" else "spawn").Pool(workers) as pool:
            results = pool.map(_probe_star, jobs, chunksize=16)
    else:
        results = [probe(*j) for j in jobs]
    rates_seen, channels_seen, durations = Counter(), Counter(), []
    for r in results:
        fname = os.path.relpath(r["path"], source.audio_dir)
        where = {"file": fname, "line": to_probe[r["path"]]}
        if "error" in r:
            problems["unreadable"].append({**where, "detail": r["error"]})
            continue
        rates_seen[r["sample_rate"]] += 1
        channels_seen[r["channels"]] += 1
        if r["frames"] == 0:
            problems["zero_length"].append(where)
            continue
        seconds = r["frames"] / r["sample_rate"]
        durations.append(seconds)
        if r["non_finite"]:
            problems["nan_inf"].append({**where, "detail": f"{r['non_finite']} NaN/Inf samples"})
        elif r["silent"]:
            problems["silent"].append({**where, "detail": f"peak {r['peak_dbfs']} dBFS"})
        elif r["peak"] > 1.0:  # float files can hold any value; the encoders expect [-1, 1]
            problems["out_of_range"].append({**where, "detail": f"peak {r['peak']:.3g} (full scale is 1.0): "
                                             "clipping, or samples stored on the wrong scale"})
        if rates and r["sample_rate"] not in rates:
            problems["unusual_sample_rate"].append({**where, "detail": f"{r['sample_rate']} Hz"})
        if r["channels"] > max_channels:
            problems["unusual_channels"].append({**where, "detail": f"{r['channels']} channels"})
        if seconds < min_seconds:
            problems["very_short"].append({**where, "detail": f"{seconds:.2f} s"})
    clips = len(file_rows)
    return {
        "csv": str(source.csv), "audio_dir": str(source.audio_dir), "rows": len(source.rows), "clips": clips,
        "checked_audio": len(results),
        "stats": {"sample_rates": {str(k): v for k, v in sorted(rates_seen.items())},
                  "channels": {str(k): v for k, v in sorted(channels_seen.items())},
                  "seconds": ({"min": round(min(durations), 2), "median": round(statistics.median(durations), 2),
                               "max": round(max(durations), 2)} if durations else None)},
        "problems": {k: v for k, v in problems.items() if v},
    }


def build_module(dataset: str, root: str, args: list[str]):
    from data_modules import AudioCapsDataModule, ClothoDataModule, WavCapsDataModule

    kwargs = {}
    for a in args:
        if "=" not in a:
            raise SystemExit(f"--arg expects key=value, got {a!r}")
        k, v = a.split("=", 1)
        try:
            kwargs[k] = json.loads(v)
        except ValueError:
            kwargs[k] = v
    cls = {"clotho": ClothoDataModule, "audiocaps": AudioCapsDataModule, "wavcaps": WavCapsDataModule}[dataset]
    return cls(root=root, **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coattn data-check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["clotho", "audiocaps", "wavcaps"])
    p.add_argument("root")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="data-module option, e.g. --arg val_csv=my_val.csv --arg file_template='Y{youtube_id}.wav'")
    p.add_argument("--splits", nargs="+", default=None,
                   help="splits to check (default: train and the evaluation splits the dataset publishes: "
                        "train, val, test; WavCaps has only train)")
    p.add_argument("--report", default="data_check_report.json")
    p.add_argument("--rates", default="44100,48000", help="expected sample rates (others are flagged); '' = any")
    p.add_argument("--max-channels", type=int, default=2)
    p.add_argument("--silence-dbfs", type=float, default=-60.0, help="peak below this = silent")
    p.add_argument("--min-seconds", type=float, default=1.0, help="shorter clips are flagged")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    a = p.parse_args(argv)
    dm = build_module(a.dataset, a.root, a.arg)
    if a.splits is None:  # WavCaps publishes no val/test: checking them would report two false errors
        a.splits = ["train", *getattr(dm, "EVAL_SPLITS", ("val", "test"))]
    rates = {int(r) for r in a.rates.split(",") if r.strip()}
    t0 = time.perf_counter()
    report = {"dataset": a.dataset, "root": a.root, "options": a.arg, "splits": {}}
    for name in a.splits:
        try:
            report["splits"][name] = check_split(dm, name, rates, a.max_channels, a.silence_dbfs, a.min_seconds,
                                                 a.workers, a.dataset == "clotho")
        except (FileNotFoundError, ValueError) as exc:  # no/broken caption file: report it, check the rest
            report["splits"][name] = {"fatal": str(exc), "problems": {}}
    exclude = sorted({f["file"] for s in report["splits"].values() for k in EXCLUDE_KINDS
                      for f in s["problems"].get(k, [])})
    report["exclude"] = exclude
    report["seconds_elapsed"] = round(time.perf_counter() - t0, 2)
    out = Path(a.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    excl = out.with_name(out.stem + ".exclude.txt")
    excl.write_text("# clips training cannot use (coattn data-check)\n" + "".join(f + "\n" for f in exclude),
                    encoding="utf-8")

    names = list(report["splits"])
    print(f"coattn data-check {a.dataset} {a.root} ({report['seconds_elapsed']} s)")
    print(f"{'':22}" + "".join(f"{n:>10}" for n in names))
    for label, key in (("rows", "rows"), ("clips", "clips"), ("audio checked", "checked_audio")):
        print(f"{label:22}" + "".join(f"{report['splits'][n].get(key, '-'):>10}" for n in names))
    counts = {k: [len(report["splits"][n]["problems"].get(k, [])) for n in names] for k in SEVERITY}
    for kind, row in counts.items():
        if any(row):
            print(f"{kind + ' (' + SEVERITY[kind][0].upper() + ')':22}" + "".join(f"{c:>10}" for c in row))
    for n in names:
        if "fatal" in report["splits"][n]:
            print(f"{n}: {report['splits'][n]['fatal']}")
    errors = sum(sum(r) for k, r in counts.items() if SEVERITY[k] == "error")
    warnings = sum(sum(r) for k, r in counts.items() if SEVERITY[k] == "warning")
    errors += sum("fatal" in s for s in report["splits"].values())  # an unreadable caption file: one error
    print(f"{errors} errors, {warnings} warnings; report {out}; {len(exclude)} clips to exclude in {excl}")
    return 1 if errors or (a.strict and warnings) else 0


if __name__ == "__main__":
    sys.exit(main())
