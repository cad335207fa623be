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
from vishwamai.checkpoint.record import (  # noqa: F401
    FORMAT, META_ITEM, TREE_ITEM, VERSION, CheckpointError, _checkpointer, _first_difference,
    _key_name, _leaf_bytes, _ocp, _read_record_file, _save_args, _short, check_matches,
    check_record, config_diff, digest, leaf_path, leaf_table, make_record, read_record, verify)
from vishwamai.checkpoint.io import (  # noqa: F401
    _remove_tmp, _restore_tree, _tree_state, manager, restore, restore_step, save, save_step,
    step_path)
