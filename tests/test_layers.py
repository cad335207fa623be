"""The package's layers: every import of a `vishwamai` module, at module level or inside a
function, points down the order below, and no modules import each other in a circle.

The order is written here once (and drawn in the README's architecture section). A module may
import modules of a lower tier, and modules of its own package (`vishwamai.analysis.flops`
may import `vishwamai.analysis.params`) as long as that creates no cycle.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "vishwamai"

# Lowest first. `measure` imports only jax and numpy, so everything may use it; `startup` runs
# when the package is imported, before JAX starts. A name is a
# module or a package: `config`, `train`, `model`, `checkpoint`, `sharding`, `profiler` and `aot`
# are packages whose `__init__` re-exports their modules' names (config/base, hf_keys, presets;
# train/losses, step, fit; model/sampling, weights, core; checkpoint/record, io; sharding/mesh,
# step; profiler/regions, core; aot/topology, compile), each module in its package's tier.
TIERS = (
    ("measure", "compat", "validate", "startup"),
    ("config", "data", "plotting", "prose"),
    ("kernels",),
    ("layers",),
    ("hf_moe",),
    ("transformer", "hf", "checkpoint"),
    ("model",),
    ("analysis", "train"),
    ("verify", "sharding", "profiler"),
    ("aot", "distributed"),
    ("aot_gpu", "quant"),
    ("benchmarks",),
    ("bench",),
)
RANK = {name: i for i, tier in enumerate(TIERS) for name in tier}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("vishwamai",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> list[tuple[str, int]]:
    """(imported vishwamai module, line) for every import statement in the file."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            for a in node.names:                   # `from vishwamai import train` names a module
                sub = f"{mod}.{a.name}"
                found.append((sub if sub in MODULES else mod, node.lineno))
    return [(m, line) for m, line in found if m == "vishwamai" or m.startswith("vishwamai.")]


def _tier_name(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _package(module: str) -> str:
    """The subpackage a module belongs to (`vishwamai.analysis` for its modules)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_every_module_has_a_tier():
    missing = sorted({_tier_name(m) for m in MODULES if m != "vishwamai"} - set(RANK))
    assert not missing, f"modules without a tier in TIERS: {missing}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    if name == "vishwamai":
        return
    me = RANK[_tier_name(name)]
    bad = []
    for target, line in _imports(name, MODULES[name]):
        if target == "vishwamai" or _package(target) == _package(name):
            continue
        if RANK[_tier_name(target)] >= me:
            bad.append(f"line {line}: {target} (tier {RANK[_tier_name(target)]} >= {me})")
    assert not bad, f"{name} imports upward or sideways: {bad}"


def test_no_import_cycles():
    graph = {}
    for name, path in MODULES.items():
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t, _ in _imports(name, path) if t in MODULES and t != name
                       and t not in parents}       # a child importing its package is normal
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_measure_imports_only_jax_and_numpy():
    allowed = {"jax", "numpy", "vishwamai", "__future__", "dataclasses", "datetime", "math",
               "glob", "os", "platform", "re", "time"}
    for name, path in MODULES.items():
        if not name.startswith("vishwamai.measure"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                    else [])
            for m in mods:
                assert m.split(".")[0] in allowed, f"{name} imports {m}"
                if m.startswith("vishwamai"):
                    assert m.startswith("vishwamai.measure"), f"{name} imports {m}"


def test_the_checker_sees_function_level_imports(tmp_path):
    """The walk reads imports inside function bodies, not only at the top of a file."""
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from vishwamai.bench import main\n    return main\n")
    assert ("vishwamai.bench", 2) in _imports("vishwamai.config", f)


MAX_LINES = 400


def test_every_module_stays_within_the_line_limit():
    """A module that passes 400 lines is split along a seam (its names re-exported)."""
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
