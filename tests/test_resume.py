"""`fit(checkpoint_dir=...)`: a run killed with SIGKILL and started again ends where an
uninterrupted run ends, bitwise (CPU), with the same loss curve.

The runs are child processes: one uninterrupted, one killed right after its step-6 checkpoint
appears, then the same command again, which resumes. Every wait has a bound.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from vishwamai import train

pytestmark = pytest.mark.slow      # child processes, each compiling a train step

STEPS, SAVE_EVERY, KEEP = 12, 3, 2

CHILD = textwrap.dedent("""
    import json, sys, time
    import jax, numpy as np
    jax.config.update("jax_default_prng_impl", "rbg")   # as in conftest: init compiles faster
    from vishwamai import data, train
    ckpt_dir, out, slow_after = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def batches():                    # the package's own source, wrapped to be slow late on
        for i, b in enumerate(data.random_windows(data.byte_tokens(100_000), 4, 32, seed=0)):
            if 0 <= slow_after <= i:
                time.sleep(0.3)
            yield b

    state, history = train.fit("tiny", batches(), {steps}, checkpoint_dir=ckpt_dir,
                               save_every={save_every}, keep={keep})
    np.savez(out + ".npz", *[np.asarray(x) for x in jax.tree.leaves(state)])
    with open(out + ".json", "w") as f:
        json.dump(history, f)
""").format(steps=STEPS, save_every=SAVE_EVERY, keep=KEEP)


def _cmd(ckpt_dir, out, slow_after=-1):
    return [sys.executable, "-c", CHILD, str(ckpt_dir), str(out), str(slow_after)]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(cmd, timeout=120):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]


def _load(out):
    with np.load(f"{out}.npz") as z:
        leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
    with open(f"{out}.json") as f:
        return leaves, json.load(f)


def test_killed_run_resumes_bitwise(tmp_path):
    ref_out, run_out = tmp_path / "ref", tmp_path / "run"
    # The uninterrupted run and the one to be killed run side by side.
    ref = subprocess.Popen(_cmd(tmp_path / "ref_ckpt", ref_out), env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_cmd(tmp_path / "ckpt", run_out, slow_after=SAVE_EVERY * 2),
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        step6 = tmp_path / "ckpt" / str(SAVE_EVERY * 2)
        deadline = time.monotonic() + 120
        while not step6.is_dir() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert step6.is_dir(), "no step-6 checkpoint appeared within 120 s"
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        assert not (tmp_path / "ckpt" / str(STEPS)).exists(), "the run finished before the kill"
        print("checkpoint directory at the kill:", sorted(os.listdir(tmp_path / "ckpt")))
        _, err = ref.communicate(timeout=120)
        assert ref.returncode == 0, err[-3000:]
    finally:
        for p in (ref, victim):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    _run(_cmd(tmp_path / "ckpt", run_out))           # the same command again: it resumes

    ref_leaves, ref_hist = _load(ref_out)
    leaves, hist = _load(run_out)
    assert len(leaves) == len(ref_leaves)
    assert all(np.array_equal(a, b) for a, b in zip(leaves, ref_leaves)), "state differs"
    print(f"resumed == uninterrupted, bitwise: {len(leaves)} state leaves, {STEPS} losses")
    assert [h["step"] for h in hist] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "learning_rate"):
        assert [h[key] for h in hist] == [h[key] for h in ref_hist], key
    # Retention: the newest KEEP checkpoints, the last one at the final step.
    steps = sorted(int(d) for d in os.listdir(tmp_path / "ckpt") if d.isdigit())
    assert steps == [STEPS - SAVE_EVERY * (KEEP - 1 - k) for k in range(KEEP)], steps


def test_seekable_source_is_asked_for_the_resume_position(tmp_path):
    """A callable source gets the position to start at (bitwise equality of the resumed run
    is the test above; here the history carries over and only the new steps run). The run
    uses a typed key (`jax.random.key`), which is stored as its key data."""
    def windows(position):
        asked.append(position)
        k = position
        while True:
            yield np.random.default_rng([7, k]).integers(0, 256, (2, 17), dtype=np.int32)
            k += 1

    asked = []
    kw = dict(optimizer=train.make_optimizer(warmup_steps=1, total_steps=4),
              checkpoint_dir=tmp_path, save_every=2, rng=jax.random.key(0))
    _, first = train.fit("tiny", windows, 2, **kw)
    state, hist = train.fit("tiny", windows, 4, **kw)
    assert asked == [0, 2]
    assert hist[:2] == first and [h["step"] for h in hist] == [1, 2, 3, 4]
    assert int(state.step) == 4 and sorted(os.listdir(tmp_path)) == ["2", "4"]
    assert jax.dtypes.issubdtype(state.rng.dtype, jax.dtypes.prng_key)


def test_checkpoint_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="save_every=3.*checkpoint_dir"):
        train.fit("tiny", iter([]), 1, save_every=3)
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        train.fit("tiny", iter([]), 1, checkpoint_dir=tmp_path, keep=0)
