"""`import vishwamai` on a host without accelerators: JAX runs on the CPU and nothing reaches
stderr from the accelerator plugins installed for ahead-of-time compilation (libtpu, CUDA),
while a user's own choice of platform, or an attached device, is left alone."""
import os
import subprocess
import sys
import textwrap

import pytest

from vishwamai import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import os
    import vishwamai
    import jax, jax.numpy as jnp
    x = jnp.arange(8.0).reshape(2, 4)
    assert float((x @ x.T).sum()) == 216.0
    print(jax.default_backend(), os.environ.get("JAX_PLATFORMS"))
""")


def _fresh_interpreter(env_changes):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_import_and_a_computation_print_nothing_to_stderr():
    proc = _fresh_interpreter({})
    assert proc.returncode == 0, proc.stderr
    backend, platforms = proc.stdout.split()
    if startup.accelerator_present():       # the user's device: the package chooses nothing
        assert platforms == "None"
    else:
        assert (backend, platforms) == ("cpu", "cpu")
        assert proc.stderr == ""


def test_a_users_choice_is_kept():
    proc = _fresh_interpreter({"JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "cpu"]
    assert proc.stderr == "" or startup.accelerator_present()


def test_nothing_changes_with_a_device_or_a_choice(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(startup, "_backends_started", lambda: False)
    monkeypatch.setattr(startup, "accelerator_present", lambda: True)
    assert startup.select_platform() is None
    assert "JAX_PLATFORMS" not in os.environ
    monkeypatch.setattr(startup, "accelerator_present", lambda: False)
    monkeypatch.setattr(startup, "_user_chose", lambda: True)
    assert startup.select_platform() is None
    assert "JAX_PLATFORMS" not in os.environ


def test_a_running_backend_is_left_alone(monkeypatch):
    import jax
    jax.devices()                                   # this process's backends have started
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(startup, "accelerator_present", lambda: False)
    assert startup._backends_started()
    assert startup.select_platform() is None
    assert "JAX_PLATFORMS" not in os.environ


@pytest.mark.parametrize("noise", startup.PROBE_NOISE)
def test_the_filter_drops_probe_lines_and_keeps_the_rest(noise, capfd):
    with startup.filtered_stderr():
        os.write(2, f"I0000 something.cc:31] {noise} here\n".encode())
        os.write(2, b"a real warning\n")
        print("python's stderr too", file=sys.stderr)
    err = capfd.readouterr().err
    # (pytest's capture stands in for sys.stderr, so the order of the two lines may differ)
    assert sorted(err.splitlines()) == ["a real warning", "python's stderr too"]
