"""The engine's folders are layers: each imports only the layers below it (README "Layout").

Imports are read from the source (``ast``), including those inside functions, so a lazy
import cannot hide a dependency that runs the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "ASSFTSlicer" / "assft"

# Lowest first. Folders of the same rank are independent of each other.
LAYERS: dict[str, int] = {
    "errors": 0,
    "runtime": 1,
    "metrics": 1,
    "validation": 1,
    "io": 2,
    "models": 3,
    "datasets": 3,
    "workspace": 4,
    "query": 5,
    "dicom": 5,
    "training": 6,
    "settings": 7,
    "predict": 8,
    "evaluate": 9,
    "apps": 10,
    "cli": 11,
    "__main__": 12,
}


def _layer(module: str) -> str:
    """``assft.query.ranking`` -> ``query``; ``assft.cli`` -> ``cli``; ``assft`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> list[tuple[str, str, int]]:
    """(importing module file, imported ``assft...`` module, line) for every import."""
    found = []
    for path in sorted(ENGINE.rglob("*.py")):
        relative = path.relative_to(ENGINE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "assft":  # from assft import x: x is the layer
                    targets = [f"assft.{alias.name}" for alias in node.names]
                else:
                    targets = [node.module]
            else:
                continue
            found += [(module, t, node.lineno) for t in targets if t.split(".")[0] == "assft"]
    return found


def test_every_engine_folder_has_a_layer():
    folders = {p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    unknown = (folders | modules) - set(LAYERS)
    assert not unknown, f"give these a layer in LAYERS (and README's Layout): {sorted(unknown)}"


def test_no_import_runs_up_or_sideways():
    wrong = []
    for module, target, line in _imports():
        source, destination = _layer(module), _layer(target)
        if not source or not destination or source == destination:
            continue  # the package face (assft/__init__.py) and imports within one folder
        if destination == "__version__" or destination not in LAYERS:
            continue  # a name imported from the package face, not a module
        if LAYERS[destination] >= LAYERS[source]:
            wrong.append(f"{module}:{line} imports {target} ({source} may not use {destination})")
    assert not wrong, "\n".join(wrong)


def test_the_engine_never_imports_slicer_qt_or_vtk():
    # Nor its front ends: `assft web` reaches the command line through an entry point.
    forbidden = {
        "slicer",
        "qt",
        "ctk",
        "vtk",
        "ASSFTSlicerLib",
        "assft_web",
        "trame",
        "trame_slicer",
    }
    wrong = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            wrong += [
                f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in forbidden
            ]
    assert not wrong, wrong


def test_the_web_front_end_uses_the_engine_through_the_module_logic_and_the_cli_finds_it():
    """``assft web`` is registered as an entry point of the ``assft.commands`` group, and the web
    package never reaches into the engine's layers below the workspace for what the Logic does
    (it may name the engine's errors, settings and job states, and use the portable module)."""
    import tomllib

    project = tomllib.loads((ENGINE.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"]["assft.commands"]["web"] == (
        "assft_web.command:register"
    )
    allowed = {"errors", "settings", "training", "workspace"}
    # ... and the one module made for operating-system-specific calls (test_os_calls.py), and
    # the job states (standard library only, where the front ends show a job).
    permitted_modules = {"assft.runtime.portable", "assft.runtime.job_state"}
    web = ENGINE.parent / "assft_web"
    used = set()
    for path in web.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("assft.")
                and node.module not in permitted_modules
            ):
                used.add(node.module.split(".")[1])
    assert used <= allowed, sorted(used - allowed)


def test_the_job_states_need_only_the_standard_library():
    """The front ends import them at module level (issue 23): nothing but the standard
    library, so that naming a job state loads no engine."""
    import sys

    source = (ENGINE / "runtime" / "job_state.py").read_text(encoding="utf-8")
    imported = {
        name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_the_verbs_above_the_engine_are_entry_points_the_cli_knows():
    """The apps' verbs and ``assft web`` reach the CLI only through the ``assft.commands`` entry
    points, each a function that exists; the CLI knows every one (what it needs when absent)."""
    import importlib
    import tomllib

    from assft.cli import VERBS_OF_EXTRAS

    project = tomllib.loads((ENGINE.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    registered = project["project"]["entry-points"]["assft.commands"]
    assert registered == {verb: target for verb, (target, _) in VERBS_OF_EXTRAS.items()}
    for verb, target in registered.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), verb
    # The CLI imports none of them: it loads a verb by its entry point (or, from the sources
    # without installed metadata, by the same module:attribute).
    for module, target, line in _imports():
        if module.startswith("assft.cli"):
            assert not target.startswith("assft.apps"), f"{module}:{line} imports {target}"
    for path in (ENGINE / "cli").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        ] + [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert not any(name.startswith("assft_web") for name in names), path.name
