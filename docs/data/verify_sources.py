"""Check coattn's reading of the DCASE 2025 relevance file and WavCaps' blacklists against the real files.

    python docs/data/verify_sources.py --metadata-eval metadata_eval.csv --blacklist blacklist_exclude_test_ac.json \
        --clotho /work/shared/data/clotho --audiocaps /work/shared/data/audiocaps/v1

metadata_eval.csv: resources/ of CPJKU/dcase2025_task6_baseline (c78422fc); the blacklist: data/json_files/blacklist/
of XinhaoMei/WavCaps (a5a9649c) or json_files/blacklist/ of the Hugging Face dataset cvssp/WavCaps. Prints what
docs/data.md quotes: the relevance file's queries and clips found in the Clotho evaluation split through
coattn.relevance, and which AudioCaps clips the blacklist's AudioSet part names, through coattn's identity keys.
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

from coattn.relevance import match_relevance, read_relevance
from data_modules.audiocaps import AudioCapsDataModule
from data_modules.clotho import read_clotho_csv
from data_modules.wavcaps import read_blacklist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--metadata-eval", type=Path, required=True)
    p.add_argument("--blacklist", type=Path, required=True)
    p.add_argument("--clotho", type=Path, required=True, help="folder with clotho_captions_evaluation.csv")
    p.add_argument("--audiocaps", type=Path, required=True, help="folder with AudioCaps v1 train/val/test.csv")
    a = p.parse_args()

    rows = read_clotho_csv(a.clotho / "clotho_captions_evaluation.csv")
    fnames, captions = [r[0] for r in rows], [c for r in rows for c in r[1]]
    queries = read_relevance(a.metadata_eval)
    query_rows, relevant = match_relevance(queries, captions, fnames, a.metadata_eval)  # raises on any unknown
    sizes = collections.Counter(len(q.clips) for q in queries)
    own = sum(fnames[int(r) // 5] in q.clips for q, r in zip(queries, query_rows))  # 5 captions per clip, in order
    print(f"relevance file: {len(queries)} queries, all matched to Clotho evaluation captions "
          f"({len(set(query_rows.tolist()))} distinct); {int((relevant >= 0).sum())} relevant clips, all in the split; "
          f"per query {min(sizes)}-{max(sizes)} (mean {sum(k * v for k, v in sizes.items()) / len(queries):.2f}); "
          f"{own} queries list their own caption's clip")

    keys = read_blacklist(a.blacklist)
    audioset = {k for k in keys if k.startswith("audioset:")}
    dm = AudioCapsDataModule(root=str(a.audiocaps))
    split_keys = {n: set(dm.split_source(n).keys.values()) for n in ("train", "val", "test")}
    print(f"blacklist {a.blacklist.name}: {len(audioset)} AudioSet keys, {len(keys) - len(audioset)} Freesound keys; "
          + ", ".join(f"AudioCaps {n}: {len(audioset & k)} of {len(k)} clips" for n, k in split_keys.items())
          + f"; not in AudioCaps v1: {len(audioset - set().union(*split_keys.values()))}")


if __name__ == "__main__":
    main()
