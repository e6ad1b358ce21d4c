"""Read an offline W&B run file (`run-<id>.wandb`) back: config, history and summary.

W&B has no public API for offline runs, yet tests and `scripts/compare_runs.py` need them.
The file is a LevelDB-style log (7-byte header, 32 KiB blocks, records split into
FULL/FIRST/MIDDLE/LAST chunks, each with a `<IHB` crc/length/type header) of
`wandb_internal_pb2.Record` protobufs.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32 * 1024
FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", 0xBEE1, version
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    ident, magic, _ = FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError("not a W&B run file")
    pos, parts = FILE_HEADER.size, []
    while pos + CHUNK_HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER.size:  # block tail too short for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        pos += CHUNK_HEADER.size
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:
            break
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            break  # a run still being written ends in a torn record
        parts.append(chunk)
        if kind in (FULL, LAST):
            yield b"".join(parts)
            parts = []


def read_run(path: str | Path) -> dict[str, Any]:
    """{'config': {key: value}, 'history': [{key: value}, ...], 'summary': {key: value},
    'run': {'id', 'name', 'group', 'tags'}}."""
    from wandb.proto import wandb_internal_pb2 as pb

    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    run: dict[str, Any] = {}
    for payload in _payloads(Path(path).read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = {"id": rec.run.run_id, "name": rec.run.display_name,
                   "group": rec.run.run_group, "tags": list(rec.run.tags)}
        if kind in ("config", "run"):  # the initial config rides in the run record
            updates = rec.config.update if kind == "config" else rec.run.config.update
            for item in updates:
                value = json.loads(item.value_json)
                config[item.key] = value.get("value", value) if isinstance(value, dict) else value
        elif kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return {"config": config, "history": history, "summary": summary, "run": run}


def find_run_file(run_dir: str | Path) -> Path:
    """The `.wandb` file W&B wrote under a metalearn run directory."""
    # newest by the start time in the dir name (an online run that fell back to offline
    # leaves its failed `run-*` dir beside the `offline-run-*` one)
    files = sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"),
                   key=lambda f: f.parent.name.split("-")[-2])
    if not files:
        raise FileNotFoundError(f"no W&B run file under {run_dir}/wandb")
    return files[-1]
