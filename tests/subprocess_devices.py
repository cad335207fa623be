"""Run the tests' child programs on eight host CPU devices: one fresh interpreter serves them all.

XLA's device count is fixed when a process first starts its CPU backend, so tests that need a
mesh of eight run their program in a child and read its last printed line as JSON. A test
module registers its program (`register(name, source)`) and its module fixture asks for the
result (`eight_device_result(name)`): the first request runs every registered program whose
module has a test in this session, one after another in ONE child (one interpreter start and
one `import vishwamai`, not one per module), each in its own namespace with JAX's global
configuration restored after it, and caches the results for the rest of the session.
`conftest.py`'s scheduler keeps these modules on one xdist worker (`EIGHT_DEVICE_MODULES`), so
the child runs once per `make test`; under another `--dist` mode each request runs its own
program alone.
"""
import json
import os
import pathlib
import subprocess
import sys

# The modules whose programs share the child (paths from the repository root); conftest.py's
# scheduler sends them to one worker.
EIGHT_DEVICE_MODULES = ("tests/test_moe_ep.py", "tests/test_scan.py", "tests/test_sharding.py",
                        "tests/test_step_figures.py")

_PROGRAMS: dict = {}      # name -> (module file, source)
_RESULTS: dict = {}       # name -> parsed JSON result, or {"error": traceback}

# Runs the programs in turn; each prints one JSON line, which becomes its entry. A program that
# raises gets {"error": traceback} and the others still run.
_RUNNER = r"""
import contextlib, io, json, sys, traceback
import jax
programs = json.loads(sys.argv[1])
saved = {k: getattr(jax.config, k) for k in ("jax_default_matmul_precision",
                                             "jax_default_prng_impl")}
out = {}
for name, source in programs.items():
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(source, f"<{name}>", "exec"), {"__name__": "__main__"})
        out[name] = json.loads(buf.getvalue().strip().splitlines()[-1])
    except BaseException:
        out[name] = {"error": traceback.format_exc()[-4000:]}
    for k, v in saved.items():
        jax.config.update(k, v)
print(json.dumps(out))
"""


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_on_eight_cpu_devices(source: str, timeout: float = 600) -> dict:
    """Runs `source` with 8 host CPU devices and returns its last stdout line, parsed as JSON."""
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          env=_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def register(name: str, module_file: str, source: str) -> None:
    """Adds a test module's program (`module_file`: the module's `__file__`)."""
    _PROGRAMS[name] = (str(pathlib.Path(module_file).resolve()), source)


def eight_device_result(name: str, request, timeout: float = 1500) -> dict:
    """The JSON result of the program registered as `name` (`request`: the asking fixture's).

    The first call runs every registered, not yet run program of a module with a test in this
    session (all of them in one child), when the session runs on one process or under
    `--dist loadfile` (whose scheduler keeps those modules together); otherwise only `name`'s.
    """
    if name not in _RESULTS:
        together = request.config.getoption("dist", "no") in ("no", "loadfile")
        in_session = {str(item.path.resolve()) for item in request.session.items}
        names = [n for n, (path, _) in _PROGRAMS.items()
                 if n not in _RESULTS and (n == name or (together and path in in_session))]
        programs = {n: _PROGRAMS[n][1] for n in names}
        _RESULTS.update(_run_programs(programs, timeout))
    result = _RESULTS[name]
    assert "error" not in result, result.get("error")
    return result


def _run_programs(programs: dict, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(programs)],
                          capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
