"""Checkpoints that say what they hold and prove they hold it, written with Orbax.

A checkpoint is one directory holding two Orbax items, written together by one synchronous
`orbax.checkpoint.Checkpointer` and made visible only when complete:

- ``tree``: the arrays (`StandardSave`: OCDBT/TensorStore files);
- ``vishwamai``: a JSON record: ``format``, ``kind`` (``params`` or ``train_state``), the
  model's config (`ModelConfig.to_dict()`), every leaf's path, shape, dtype and the sha256 of
  its bytes (C order), a sha256 over all leaves' bytes in tree order, and free ``extra`` fields
  (a training run's step, data position and loss curve).

Atomicity is Orbax's own protocol: the items are written under a temporary name
(``<path>.orbax-checkpoint-tmp-*``) and renamed to `<path>` only after every file is flushed,
so a save that fails or is killed leaves no directory at `<path>` and no half-checkpoint
anyone could read. Saving is synchronous: Orbax's asynchronous checkpointer leaves a
background thread running when a save fails, and the process then never exits.

Restoring checks, in order, and raises `CheckpointError` naming the checkpoint's path on the
first failure: the directory exists; it is a vishwamai checkpoint (a foreign directory, a
plain Orbax checkpoint, a truncated JSON record all say so); its leaf table matches the
expected tree (the first parameter that differs is named with both shapes and dtypes, with the
config fields that differ); TensorStore can read it (truncated or garbled files); the bytes
read hash to the recorded sha256 (a flipped byte anywhere names the parameter it is in).

Training runs keep several checkpoints in numbered subdirectories through an
`orbax.checkpoint.CheckpointManager` (`manager`, `save_step`, `restore_step`), with the same
record and the same checks.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
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


def _tree_state(paths) -> tuple:
    out = []
    for p in paths:
        for root, _, files in os.walk(p):
            for f in files:
                try:
                    out.append((root, f, os.path.getsize(os.path.join(root, f))))
                except OSError:
                    pass
    return tuple(sorted(out))


def _remove_tmp(path: str, *, settle: float = 0.5, limit: float = 10.0) -> None:
    """Removes the temporary directories a failed save of `path` left.

    When one item of a save fails, the other items' writes may still be running in Orbax's
    threads; the directories are removed once nothing has changed in them for `settle`
    seconds (at most `limit` seconds of waiting), so no writer recreates them afterwards.
    """
    parent, name = os.path.split(path)

    def tmps():
        try:
            return [os.path.join(parent, e) for e in os.listdir(parent)
                    if e.startswith(name + ".orbax-checkpoint-tmp")]
        except OSError:
            return []

    deadline = time.monotonic() + limit
    last, quiet_since = None, time.monotonic()
    while tmps() and time.monotonic() < deadline:
        now = _tree_state(tmps())
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            break
        time.sleep(0.05)
    for t in tmps():
        shutil.rmtree(t, ignore_errors=True)


def save(path: str | os.PathLike, tree, *, kind: str = "params", config: Mapping | None = None,
         extra: Mapping | None = None, overwrite: bool = False) -> str:
    """Writes `tree` and its record to the new directory `path`, atomically.

    Args:
      path: the checkpoint directory; it must not exist unless `overwrite`.
      tree: a pytree of arrays.
      kind, config, extra: stored in the record (`make_record`).
      overwrite: replace an existing checkpoint. The new one is written completely under a
        sibling name first; the old one is removed only after it is in place, so a failed or
        killed save leaves the previous checkpoint readable (at `path`, or at ``path + '.old'``
        if the process died between the two renames).

    Returns:
      The absolute path written.

    Raises:
      CheckpointError: `path` exists (and not `overwrite`), or writing failed (a read-only
        directory, a regular file on the path, a full disk): the message names `path` and the
        OS error. Nothing is left under `path`.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not overwrite:
        raise CheckpointError(f"path={path!r} already exists; save writes a new directory "
                              "(pass overwrite=True to replace it)")
    record = make_record(tree, kind=kind, config=config, extra=extra)
    target = path + ".new" if os.path.lexists(path) else path
    if target != path and os.path.lexists(target):
        shutil.rmtree(target)
    try:
        with _checkpointer() as ckptr:
            ckptr.save(target, args=_save_args(tree, record))
    except Exception as e:
        _remove_tmp(target)
        raise CheckpointError(f"cannot save a checkpoint to path={path!r}: {_short(e)}") from e
    if target != path:
        if os.path.lexists(path + ".old"):       # left by a save killed between the renames
            shutil.rmtree(path + ".old")
        os.rename(path, path + ".old")
        os.rename(target, path)
        shutil.rmtree(path + ".old")
    return path


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


def _restore_tree(restore, record: Mapping, path: str):
    try:
        return restore()
    except CheckpointError:
        raise
    except Exception as e:
        why = _short(e)
        # TensorStore names the array it failed on by its dotted key ("layer_0.mlp.wi.kernel").
        where = ""
        m = re.search(r'reading "([^"/]+)/', why)
        if m:
            by_key = {row[0].replace("/", "."): row for row in record["leaves"]}
            row = by_key.get(m.group(1))
            if row is not None:
                where = f" in parameter {row[0]!r} ({tuple(row[1])}, {row[2]})"
        raise CheckpointError(f"checkpoint at path={path!r} is corrupt or truncated: its data "
                              f"files cannot be read{where}: {why}") from e


def restore(path: str | os.PathLike, abstract, *, record: Mapping | None = None,
            config: Mapping | None = None):
    """Reads the tree saved at `path` into the structure, shapes and dtypes of `abstract`.

    Args:
      path: a directory written by `save`.
      abstract: the expected tree (arrays or `jax.ShapeDtypeStruct`s, with shardings if the
        result should be sharded).
      record: the record if already read (`read_record`).
      config: this model's config as a dict, only to name differing fields in errors.

    Returns:
      The tree, its bytes verified against the recorded sha256.
    """
    path = os.path.abspath(os.fspath(path))
    record = _read_record_file(path) if record is None else record
    check_matches(record, abstract, path, config=config)
    ocp = _ocp()

    def run():
        with _checkpointer() as ckptr:
            return ckptr.restore(path, args=ocp.args.Composite(
                **{TREE_ITEM: ocp.args.StandardRestore(abstract)}))[TREE_ITEM]

    tree = _restore_tree(run, record, path)
    verify(tree, record, path)
    return tree


# ============================================================================================
# numbered checkpoints of a training run
# ============================================================================================

def manager(directory: str | os.PathLike, *, keep: int | None = None):
    """An `orbax.checkpoint.CheckpointManager` over `directory` keeping the newest `keep`
    steps (None: all), saving synchronously, removing temporary directories a killed save
    left behind."""
    ocp = _ocp()
    directory = os.path.abspath(os.fspath(directory))
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=False,
                                        cleanup_tmp_directories=True)
    try:
        return ocp.CheckpointManager(directory, options=opts, item_names=(TREE_ITEM, META_ITEM))
    except Exception as e:
        raise CheckpointError(f"cannot use checkpoint_dir={directory!r}: {_short(e)}") from e


def step_path(mngr, step: int) -> str:
    """The directory of checkpoint `step` under a manager."""
    return os.fspath(mngr.directory / str(step))


def save_step(mngr, step: int, tree, *, kind: str = "train_state",
              config: Mapping | None = None, extra: Mapping | None = None) -> str:
    """Saves `tree` as checkpoint `step` of `mngr` (same record and atomicity as `save`)."""
    record = make_record(tree, kind=kind, config=config, extra=extra)
    try:
        mngr.save(step, args=_save_args(tree, record), force=True)
        mngr.wait_until_finished()
    except Exception as e:
        raise CheckpointError(f"cannot save step {step} to "
                              f"checkpoint_dir={os.fspath(mngr.directory)!r}: {_short(e)}") from e
    return step_path(mngr, step)


def restore_step(mngr, step: int, abstract, *, config: Mapping | None = None):
    """`(tree, record)` of checkpoint `step` of `mngr`, checked as `restore` checks."""
    path = step_path(mngr, step)
    record = _read_record_file(path)
    check_matches(record, abstract, path, config=config)
    ocp = _ocp()

    def run():
        return mngr.restore(step, args=ocp.args.Composite(
            **{TREE_ITEM: ocp.args.StandardRestore(abstract)}))[TREE_ITEM]

    tree = _restore_tree(run, record, path)
    verify(tree, record, path)
    return tree, record
