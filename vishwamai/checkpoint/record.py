"""What a checkpoint says about itself: the record (format, version, kind, config, the table of
leaves with a sha256 of every one), its reading and checking (`read_record`, `check_record`,
`check_matches` against the tree expected, `verify` of the restored bytes), the errors
(`CheckpointError`, naming the path and the parameter) and the Orbax handles.
"""
from __future__ import annotations

import hashlib
import os
from typing import Mapping

import jax
import numpy as np


FORMAT = "vishwamai-checkpoint"
VERSION = 1
TREE_ITEM = "tree"
META_ITEM = "vishwamai"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, is missing, foreign, mismatched or corrupt."""


# ============================================================================================
# leaf table and checksums
# ============================================================================================

def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_path(path) -> str:
    """A tree path as ``'layer_0/attn/q/kernel'``."""
    return "/".join(_key_name(k) for k in path)


def leaf_table(tree) -> list[list]:
    """``[[path, shape, dtype], ...]`` of a tree of arrays or `ShapeDtypeStruct`s, in tree order."""
    return [[leaf_path(p), list(np.shape(x)), str(np.dtype(x.dtype))]
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _leaf_bytes(x) -> memoryview:
    a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
    return memoryview(a.reshape(-1).view(np.uint8))


def digest(tree) -> dict | None:
    """``{'sha256': over all leaves' bytes in tree order, 'leaves': [sha256 per leaf]}``.

    None when some leaf is not fully addressable here (an array sharded over several
    processes): no process can hash what it cannot read.
    """
    leaves = jax.tree.leaves(tree)
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves):
        return None
    total, per = hashlib.sha256(), []
    for x in leaves:
        b = _leaf_bytes(x)
        total.update(b)
        per.append(hashlib.sha256(b).hexdigest())
    return {"sha256": total.hexdigest(), "leaves": per}


def config_diff(saved: Mapping | None, current: Mapping | None) -> list[str]:
    """``'field: saved -> current'`` for every config field that differs."""
    if saved is None or current is None:
        return []
    keys = list(saved) + [k for k in current if k not in saved]
    return [f"{k}: {saved.get(k, '<absent>')!r} -> {current.get(k, '<absent>')!r}"
            for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>")]


def _first_difference(saved: list, expected: list) -> str | None:
    """The first leaf where two leaf tables differ, in words; None if they are equal."""
    have = {row[0]: row for row in saved}
    want = {row[0]: row for row in expected}
    for path, shape, dtype in expected:
        if path not in have:
            return f"parameter {path!r} ({tuple(shape)}, {dtype}) is not in the checkpoint"
        _, s_shape, s_dtype = have[path][:3]
        if list(s_shape) != list(shape) or s_dtype != dtype:
            return (f"parameter {path!r} is {tuple(s_shape)} {s_dtype} in the checkpoint, "
                    f"{tuple(shape)} {dtype} expected")
    for path, shape, dtype in (row[:3] for row in saved):
        if path not in want:
            return f"the checkpoint has parameter {path!r} ({tuple(shape)}, {dtype}), not expected"
    return None


# ============================================================================================
# one checkpoint directory
# ============================================================================================

def _ocp():
    import orbax.checkpoint as ocp
    return ocp


def _checkpointer():
    ocp = _ocp()
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _short(e: BaseException, limit: int = 300) -> str:
    """The first line of the innermost cause of an exception: TensorStore's outer messages
    run to pages of JSON spec, the innermost one names the file and the byte range."""
    seen = set()
    while id(e) not in seen and (e.__cause__ or e.__context__) is not None:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first[:limit]}"


def make_record(tree, *, kind: str, config: Mapping | None, extra: Mapping | None = None) -> dict:
    """The JSON record stored beside `tree` (see the module docstring)."""
    d = digest(tree)
    table = leaf_table(tree)
    if d is not None:
        table = [row + [h] for row, h in zip(table, d["leaves"])]
    return {"format": FORMAT, "version": VERSION, "kind": kind,
            "config": None if config is None else dict(config),
            "sha256": None if d is None else d["sha256"], "leaves": table,
            "extra": dict(extra or {})}


def _save_args(tree, record):
    ocp = _ocp()
    return ocp.args.Composite(**{TREE_ITEM: ocp.args.StandardSave(tree),
                                 META_ITEM: ocp.args.JsonSave(record)})


def _read_record_file(path: str) -> dict:
    """The JSON record of the checkpoint at `path` (a directory), checked to be ours."""
    if not os.path.isdir(path):
        hint = (f" (the checkpoint it replaced is at {path + '.old'!r}: a save with "
                "overwrite=True was stopped between its two renames)"
                if os.path.isdir(path + ".old") else "")
        raise CheckpointError(f"no checkpoint directory at path={path!r}{hint}")
    meta_dir = os.path.join(path, META_ITEM)
    if not os.path.isdir(meta_dir):
        found = sorted(os.listdir(path))[:8]
        raise CheckpointError(
            f"path={path!r} is not a vishwamai checkpoint: it has no {META_ITEM}/ record "
            f"(found {found}); checkpoints are written by VishwamAI.save or fit(checkpoint_dir=...)")
    ocp = _ocp()
    try:
        with _checkpointer() as ckptr:
            record = ckptr.restore(path, args=ocp.args.Composite(
                **{META_ITEM: ocp.args.JsonRestore()}))[META_ITEM]
    except Exception as e:
        raise CheckpointError(f"the record {meta_dir!r} of the checkpoint at path={path!r} is "
                              f"unreadable (truncated or corrupt): {_short(e)}") from e
    return check_record(record, path)


def check_record(record, path: str) -> dict:
    """`record` if it is a vishwamai record, else a `CheckpointError` naming `path`."""
    fmt = record.get("format") if isinstance(record, Mapping) else None
    if fmt != FORMAT:
        raise CheckpointError(f"path={path!r} is not a vishwamai checkpoint: its {META_ITEM} "
                              f"record has format={fmt!r}, not {FORMAT!r}")
    if record.get("version") != VERSION or not isinstance(record.get("leaves"), list):
        raise CheckpointError(f"checkpoint at path={path!r} has record version "
                              f"{record.get('version')!r}; this package reads version {VERSION}")
    return dict(record)


def read_record(path: str | os.PathLike) -> dict:
    """The JSON record of the checkpoint at `path`: kind, config, leaf table, sha256, extra."""
    return _read_record_file(os.path.abspath(os.fspath(path)))


def check_matches(record: Mapping, abstract, path: str, *, config: Mapping | None = None) -> None:
    """Raises `CheckpointError` unless the record's leaf table equals `abstract`'s."""
    diff = _first_difference(record["leaves"], leaf_table(abstract))
    if diff is None:
        return
    fields = config_diff(record.get("config"), config)
    cfg = f"; config fields that differ (checkpoint -> this model): {', '.join(fields)}" \
        if fields else ""
    raise CheckpointError(f"checkpoint at path={path!r} does not fit: {diff}{cfg}")


def verify(tree, record: Mapping, path: str) -> None:
    """Raises `CheckpointError` naming the first leaf whose bytes differ from the record."""
    if record.get("sha256") is None:
        return
    d = digest(tree)
    if d is None or d["sha256"] == record["sha256"]:
        return
    for row, h in zip(record["leaves"], d["leaves"]):
        if row[3] != h:
            raise CheckpointError(
                f"checkpoint at path={path!r} is corrupt: the bytes of parameter {row[0]!r} "
                f"({tuple(row[1])}, {row[2]}) do not match the sha256 recorded at save time")
    raise CheckpointError(f"checkpoint at path={path!r} is corrupt: content sha256 mismatch")
