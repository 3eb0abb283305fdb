"""The layers of DESIGN.md hold: every import of a jaxrl module (also inside function bodies)
points to the same or a lower layer, and no modules import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> layer; a package's submodules take its layer unless listed themselves
LAYERS = {
    "jaxrl.envs": 1,  # the environment side (envs/, installed as jaxrl.envs)
    # the shared vocabulary, and NumPy statistics of results (programs rank and report with them)
    "jaxrl.config": 2, "jaxrl.core": 2, "jaxrl.metrics": 2, "jaxrl.stats": 2,
    # building blocks, pure and jittable
    "jaxrl.returns": 3, "jaxrl.losses": 3, "jaxrl.networks": 3, "jaxrl.optim": 3, "jaxrl.targets": 3,
    "jaxrl.replay": 3, "jaxrl.normalize": 3, "jaxrl.batching": 3, "jaxrl.explore": 3, "jaxrl.rng": 3,
    "jaxrl.algos": 4,  # one module per family
    # programs built over train
    "jaxrl.loop": 5, "jaxrl.rollout": 5, "jaxrl.evaluate": 5, "jaxrl.sweeps": 5, "jaxrl.parallel": 5,
    "jaxrl.population": 5, "jaxrl.hpo": 5, "jaxrl.meta": 5,
    # host side
    "jaxrl.runner": 6, "jaxrl.checkpoint": 6, "jaxrl.runs": 6, "jaxrl.loggers": 6,
    "jaxrl.plots": 6, "jaxrl.bench": 6, "jaxrl.cli": 6, "jaxrl.compile_cache": 6,
    "jaxrl": 7,  # the package's front door re-exports from everywhere
}


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / "jaxrl").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "envs").rglob("*.py")):
        parts = ("jaxrl", "envs") + path.relative_to(ROOT / "envs").with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _layer(module: str) -> int:
    name = module
    while name not in LAYERS:
        if "." not in name:
            raise AssertionError(f"{module} has no layer in tests/test_layers.py: add it (see DESIGN.md)")
        name = name.rsplit(".", 1)[0]
    return LAYERS[name]


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The jaxrl modules ``module`` imports anywhere in its file, resolved to known modules."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod
            base = "jaxrl." + base if base == "envs" or base.startswith("envs.") else base
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("envs.") or name == "envs":  # envs/ is jaxrl.envs
                name = "jaxrl." + name
            while name and name not in known:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != module:
                found.add(name)
    return found


def test_imports_point_down_the_layers_and_have_no_cycles():
    files = _module_files()
    graph = {m: _imports(m, p, set(files)) for m, p in files.items()}
    upward = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
              for m, deps in graph.items() for d in sorted(deps) if _layer(d) > _layer(m)]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)

    # no cycles: a depth-first search that meets a module on its own path has found one
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if d.startswith(m + ".") or m.startswith(d + "."):  # a package and its own modules
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_imports_in_function_bodies(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from jaxrl.loop import make_train\n    import jaxrl.runner\n")
    assert _imports("jaxrl.optim", source, {"jaxrl.loop", "jaxrl.runner"}) == {"jaxrl.loop", "jaxrl.runner"}
