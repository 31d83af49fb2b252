"""DCASE 2025 multi-relevance evaluation: several relevant clips per text query, ranked by mAP@16.

    coattn test --config experiments/clotho_iterating.yaml --ckpt_path CKPT \
        --data.init_args.relevance_files='{test: resources/metadata_eval.csv}'

Since DCASE 2025 (task 6) a query may have several relevant clips. The task's official evaluation
code is the baseline's ``d25_t6/retrieval_module.py::on_validation_epoch_end`` (repository
CPJKU/dcase2025_task6_baseline, commit c78422fcbed579877919620a30075baccf82bf2b; the metric came
in 14bd413e). What it does, and what this module does identically:

    relevance file   ``resources/metadata_eval.csv``: ``query,audio_filenames``, the second column a
                     Python list literal of file names (read with ``ast.literal_eval``); 1,037 queries
                     of the Clotho evaluation split, 1-12 relevant clips each. Relevance is already
                     binary there: the code applies NO threshold.
    matching         a query is the row of the first caption with that exact text; a file name the
                     column of that clip (``list.index``); an unknown one raises (here: DataError
                     naming the file, line and entry).
    ranks            0-based rank of each relevant clip in the query's row of scores, over all clips
                     of the split (``argsort(argsort(-c))``).
    AP@k             relevant ranks sorted ascending; sum over the i-th (1-based) of them with rank < k
                     of i / (rank + 1) (precision at that rank), divided by the number of relevant
                     clips |R| (not min(|R|, k)); mAP@k = mean over the file's queries.

The official code calls that function with k=10 (logged ``test_multiple_positives/mAP@10``) while
the README and the challenge rank on mAP@16; we report both (``multi_mAP@16``, ``multi_mAP@10``).
Ties: the official double argsort is not stable; here the coattn tie rule applies (coattn/metrics.py:
the lower clip index first), identical whenever scores are distinct. R@k: the official code has R@k
only with one relevant clip (``(top_k == target).sum(1).mean()``); ``multi_R@k`` applies the same
hit rule to the relevant set: 1 if any relevant clip ranks in the top k (our generalisation).

A second, graded format is read too: ``caption`` (or ``query``), ``file_name``, ``relevance``, one
row per pair; with ``threshold`` the pairs scoring at least that count as relevant. A file with
values other than 0 / 1 and no threshold is refused: no official threshold exists to default to.
"""
from __future__ import annotations

import ast
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from coattn.errors import ConfigError, DataError

MAP_CUTOFFS = (16, 10)  # the challenge's ranking metric first, then the cutoff the official code logs
_PAD = torch.iinfo(torch.long).max  # rank of padding: never < k
_BLOCK = 2 ** 24  # compared elements per block (bounds memory, like coattn/metrics.py)


@dataclass
class RelevanceQuery:
    query: str
    clips: list[str]  # relevant file names, in file order
    line: int  # line of the file where the query (its last row) ends


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"relevance file {path} not found: fix the path in data relevance_files") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_relevance(path: str | Path, threshold: float | None = None) -> list[RelevanceQuery]:
    """The queries of a relevance file with their relevant clips (module docstring for the formats)."""
    path = Path(path)
    rows = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    header = set(rows.fieldnames or [])
    first_line: dict = {}  # query (DCASE 2025) or (query, clip) (graded) -> line of its first row
    if {"query", "audio_filenames"} <= header:
        out = []
        for row in rows:
            try:
                clips = ast.literal_eval(row["audio_filenames"] or "")
            except (ValueError, SyntaxError):
                clips = None
            if not isinstance(clips, list) or not clips or not all(isinstance(c, str) for c in clips):
                raise DataError(f"{path}: line {rows.line_num}: audio_filenames must be a non-empty list of file "
                                f"names like \"['a.wav', 'b.wav']\", got {row['audio_filenames']!r}")
            if row["query"].strip() in first_line:
                raise DataError(f"{path}: line {rows.line_num}: query {row['query']!r} repeats line "
                                f"{first_line[row['query'].strip()]} (it would count twice in mAP@16): keep one "
                                "row per query")
            first_line[row["query"].strip()] = rows.line_num
            out.append(RelevanceQuery(row["query"], clips, rows.line_num))
        return out
    query_col = "caption" if "caption" in header else "query"
    if not {query_col, "file_name", "relevance"} <= header:
        raise DataError(f"{path}: row 1 (header) must be 'query,audio_filenames' (DCASE 2025) or "
                        f"'caption,file_name,relevance'; found {rows.fieldnames}")
    graded: dict[str, RelevanceQuery] = {}
    values = []
    for row in rows:
        try:
            value = float(row["relevance"])
        except (TypeError, ValueError):
            raise DataError(f"{path}: line {rows.line_num}: relevance {row['relevance']!r} is not a number") from None
        if not math.isfinite(value):
            raise DataError(f"{path}: line {rows.line_num}: relevance {row['relevance']!r} is not a finite number "
                            "(NaN or infinity): fix or remove that row")
        pair = (row[query_col].strip(), row["file_name"])
        if pair in first_line:
            raise DataError(f"{path}: line {rows.line_num}: query {row[query_col]!r} with clip {row['file_name']!r} "
                            f"repeats line {first_line[pair]} (it would count twice): keep one row per pair")
        first_line[pair] = rows.line_num
        values.append(value)
        q = graded.setdefault(row[query_col], RelevanceQuery(row[query_col], [], rows.line_num))
        q.line = rows.line_num
        if (value >= threshold) if threshold is not None else value > 0:
            q.clips.append(row["file_name"])
    if threshold is None and any(v not in (0.0, 1.0) for v in values):
        raise ConfigError(f"{path} holds graded relevance (values other than 0 and 1): set data relevance_threshold "
                          "(the official DCASE 2025 file is binary; its code applies no threshold)")
    return [q for q in graded.values() if q.clips]  # a query without relevant clip has no AP


def match_relevance(queries: Sequence[RelevanceQuery], captions: Sequence[str], fnames: Sequence[str],
                    path: str | Path = "relevance file") -> tuple[Tensor, Tensor]:
    """(query_rows (Q,), relevant (Q, R_max) clip indices padded with -1) for a scored split.

    Captions are matched after stripping surrounding spaces (the data modules strip captions).
    """
    row_of: dict[str, int] = {}
    for i, c in enumerate(captions):
        row_of.setdefault(c.strip(), i)  # the first occurrence, as the official list.index
    col_of = {f: j for j, f in reversed(list(enumerate(fnames)))}
    rows, lists = [], []
    for q in queries:
        if q.query.strip() not in row_of:
            raise DataError(f"{path}: line {q.line}: query {q.query!r} is not a caption of the evaluated split "
                            f"({len(row_of)} distinct captions): is this the relevance file of that split (and the "
                            "whole split evaluated, no limit_*_batches)?")
        unknown = [c for c in q.clips if c not in col_of]
        if unknown:
            raise DataError(f"{path}: line {q.line}: clip {unknown[0]!r} (query {q.query!r}) is not a clip of the "
                            f"evaluated split ({len(col_of)} clips; missing audio is left out of a split)")
        if len(set(q.clips)) < len(q.clips):
            raise DataError(f"{path}: line {q.line}: query {q.query!r} lists a clip twice")
        rows.append(row_of[q.query.strip()])
        lists.append([col_of[c] for c in q.clips])
    width = max((len(x) for x in lists), default=0)
    relevant = torch.full((len(lists), width), -1, dtype=torch.long)
    for i, x in enumerate(lists):
        relevant[i, :len(x)] = torch.tensor(x, dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long), relevant


def relevant_ranks(scores: Tensor, query_rows: Tensor, relevant: Tensor) -> Tensor:
    """0-based ranks (Q, R_max) of each query's relevant clips among all M clips, ascending per row,
    padding (-1 in ``relevant``) at the end as ``_PAD``. Tie rule of coattn/metrics.py."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N captions, M clips), got shape {tuple(scores.shape)}")
    scores = scores.float() if scores.is_floating_point() and scores.dtype != torch.float64 else scores.double()
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; ranks would be undefined")
    m = scores.shape[1]
    s = scores[query_rows.to(scores.device)]  # (Q, M)
    rel = relevant.to(scores.device)
    s_rel = s.gather(1, rel.clamp(min=0))  # (Q, R)
    idx = torch.arange(m, device=scores.device)
    ranks = torch.empty(rel.shape, dtype=torch.long, device=scores.device)
    step = max(1, _BLOCK // max(m * max(rel.shape[1], 1), 1))
    for a in range(0, len(rel), step):  # blocks of queries, only to bound memory
        sr, r = s_rel[a:a + step, :, None], rel[a:a + step, :, None]
        row = s[a:a + step, None, :]
        ranks[a:a + step] = ((row > sr) | ((row == sr) & (idx < r))).sum(-1)
    ranks = ranks.masked_fill(rel < 0, _PAD).cpu()
    return ranks.sort(dim=1).values


def per_query_multi_metrics(scores: Tensor, query_rows: Tensor, relevant: Tensor,
                            ks: Sequence[int] = (1, 5, 10)) -> dict[str, Tensor]:
    """Per-query vectors (float64, one entry per relevance-file query): ``multi_mAP@16``,
    ``multi_mAP@10`` (official AP@k) and ``multi_R@k``; their means are the reported metrics."""
    ranks = relevant_ranks(scores, query_rows, relevant)
    counts = (relevant >= 0).sum(1).double()
    r = ranks.double()  # _PAD -> ~9.2e18, never below a cutoff
    i = torch.arange(1, r.shape[1] + 1, dtype=torch.float64)  # i-th relevant clip: i relevant at or above it
    out: dict[str, Tensor] = {}
    for k in MAP_CUTOFFS:
        out[f"multi_mAP@{k}"] = torch.where(r < k, i / (r + 1), torch.zeros_like(r)).sum(1) / counts
    best = r[:, 0] if r.shape[1] else r.new_zeros(0)
    for k in ks:
        out[f"multi_R@{k}"] = (best < k).double()
    return out


def check_relevance(path: str | Path, threshold: float | None, captions: Sequence[str], fnames: Sequence[str]) -> int:
    """Read and match a relevance file against a split before it is scored (the data module's set-up):
    DataError naming the file and line for anything ``multi_relevance_metrics`` would refuse at the end.
    Returns the number of queries."""
    queries = read_relevance(path, threshold)
    if not queries:
        raise DataError(f"{path}: no query with a relevant clip")
    match_relevance(queries, captions, fnames, path)
    return len(queries)


def multi_relevance_metrics(scores: Tensor, captions: Sequence[str], fnames: Sequence[str], path: str | Path,
                            threshold: float | None = None) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Read, match and score one relevance file against a scored split: (metrics, per-query vectors)."""
    queries = read_relevance(path, threshold)
    if not queries:
        raise DataError(f"{path}: no query with a relevant clip")
    rows, relevant = match_relevance(queries, captions, fnames, path)
    per_query = per_query_multi_metrics(scores, rows, relevant)
    metrics = {k: float(v.mean()) for k, v in per_query.items()}
    metrics["multi_queries"] = float(len(queries))
    return metrics, per_query
