"""Read an offline W&B run's ``run-<id>.wandb`` file (wandb >= 0.20 has no Python reader for it).

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then 32 KiB
blocks of records ``crc32c(4) length(2, LE) type(1) payload`` (type 1 = full, 2/3/4 = first /
middle / last fragment); each payload is a ``wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, buf = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind in (1, 2):
            buf = payload
        else:
            buf += payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""


def config(path: str | Path) -> dict:
    """The run's config as the union of its config updates (nested values decoded from JSON)."""
    out: dict = {}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        items = rec.config.update if kind == "config" else rec.run.config.update if kind == "run" else []
        for it in items:
            key = it.key or ".".join(it.nested_key)
            out[key] = json.loads(it.value_json)
    return out


def run_id(path: str | Path) -> str | None:
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            return rec.run.run_id
    return None


def artifacts(path: str | Path) -> list[dict]:
    """Artifacts logged by the run: name, type and manifest entries (path in artifact -> staged file)."""
    out = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "artifact":
            a = rec.artifact
            out.append({"name": a.name, "type": a.type,
                        "entries": {c.path: c.local_path for c in a.manifest.contents}})
    return out
