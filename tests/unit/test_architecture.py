"""The package's shape (docs/architecture.md): a short top level, no import circles, state as arguments."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from support import REPO

PACKAGE = REPO / "kronos_rolling"


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                names.add(target if target in known else node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):  # type-only imports are not dependencies at run time
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    names.discard(inner.module)
    return {n for n in names if n in known}


def test_at_most_six_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 6, top


def test_no_import_circles():
    mods = modules()
    graph = {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}
    # A package's __init__ is not a dependency of its own modules (Python loads it first).
    graph = {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node, trail):
        if node in done:
            return
        if node in visiting:
            cycles.append(trail[trail.index(node):] + [node])
            return
        visiting.add(node)
        for dep in sorted(graph[node]):
            visit(dep, trail + [node])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []


def test_only_the_settings_and_the_command_line_touch_the_environment():
    readers = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"dict\(os\.environ", "", text)  # a child process's environment, built from ours
        if re.search(r"os\.environ|os\.getenv", text):
            readers.append(path.relative_to(PACKAGE).as_posix())
    # settings.py reads it; cli/options.py configures MLflow's client for the process;
    # cli/server.py hands MLflow's own auth credentials to the server; tracking/server.py's
    # `mlflow db upgrade` child reads its database URI from its environment.
    assert sorted(readers) == ["cli/options.py", "cli/server.py", "settings.py", "tracking/server.py"]


def test_no_mlflow_global_state_in_the_package():
    """Runs and models go through the tracking context's client, never the fluent API."""
    fluent = re.compile(r"mlflow\.(start_run|set_tracking_uri|set_experiment|log_\w+|register_model|"
                        r"set_tags?|active_run|end_run|get_tracking_uri|search_runs)\(|MlflowClient\(\)")
    # One exception: a pyfunc model's load_context is handed no registry by MLflow; when its
    # caller passes none in model_config, it verifies the version against the registry MLflow
    # itself resolved `models:/...` with, MLflow's current tracking URI.
    allowed = {"tracking/pyfunc.py": "config.get(\"tracking_uri\") or mlflow.get_tracking_uri()"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name, text = path.relative_to(PACKAGE).as_posix(), path.read_text()
        if fluent.search(text.replace(allowed.get(name, "\0"), "")):
            offenders.append(name)
    assert offenders == []


# The layers, lowest first (docs/architecture.md): a module may import its own package and the
# ones on lower layers, never a higher one nor a sibling on its own layer.
LAYERS = (
    ("kronos_rolling", "errors"),  # the package's face (ASSET_CLASSES) and the errors
    ("files", "names"),  # writing and hashing files; the registry's names
    ("settings", "locks"),
    ("data",),
    ("model",),
    ("evaluation",),
    ("tracking",),
    ("registry",),
    ("training", "serve"),
    ("pipeline",),
    ("cli",),
    ("project",),  # the MLproject bridge runs the command line
)
LAYER = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_package_sits_on_a_layer():
    mods = modules()
    assert sorted({unit_of(m) for m in mods} - set(LAYER)) == []


def test_imports_only_flow_down_the_layers():
    mods = modules()
    upward = []
    for name, path in mods.items():
        mine = unit_of(name)
        for target in imports_of(path, set(mods)):
            theirs = unit_of(target)
            if theirs != mine and LAYER[theirs] >= LAYER[mine]:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_no_package_imports_another_ones_private_names():
    mods = modules()
    reach_ins = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kronos_rolling."):
                if unit_of(node.module) == unit_of(name):
                    continue
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private or any(part.startswith("_") and part != "__main__" for part in node.module.split(".")):
                    reach_ins.append(f"{name}: from {node.module} import {', '.join(a.name for a in node.names)}")
    assert reach_ins == []
