"""Writing and reading checkpoints with Orbax: `save` (atomic: a temporary directory renamed only
after every file is flushed, with its stale leftovers removed), `restore` (checked against the
record, then verified), and numbered step checkpoints under a manager (`manager`, `save_step`,
`restore_step`, `step_path`).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from typing import Mapping


from vishwamai.checkpoint.record import (META_ITEM, TREE_ITEM, CheckpointError, _checkpointer, _ocp,
                                         _read_record_file, _save_args, _short, check_matches,
                                         make_record, verify)


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
