"""Run a test's child program on eight host CPU devices, in a fresh interpreter with a bound.

XLA's device count is fixed when a process first starts its CPU backend, so tests that need a
mesh of eight run their program in a child and read its last printed line as JSON.
"""
import json
import os
import subprocess
import sys


def run_on_eight_cpu_devices(source: str, timeout: float = 600) -> dict:
    """Runs `source` with 8 host CPU devices and returns its last stdout line, parsed as JSON."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
