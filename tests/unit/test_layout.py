"""The codebase's shape, read from the source with `ast`: no import cycles, the exporter free of
torch, the training loop free of the exporter, no module grown into two, and the one adapter's
rules written once.

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:` and under
`if __name__ == "__main__":`, since each is an edge a reader has to follow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.procs import REPO

PACKAGES = ("nanogpt", "exporter", "nanogpt_monitor")
# ~350 lines is a guideline (STYLE.md), not a rule: a module that keeps one concern together may be
# longer. This bound only catches a file that has become two concerns in one.
MAX_LINES = 700
TORCH_SIDE = ("torch", "transformers", "lightning", "pytorch_lightning", "nanogpt", "nanogpt_monitor")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name)."""
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imported_names(name: str, path: Path, known: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """The absolute module names `path` imports anywhere in its code. `from a import b` is a.b when
    that is one of the `known` modules, else a (b is a name defined in a). Parent packages that
    Python imports on the way are not counted: they are already being imported."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in (or is)
                parts = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the packages it imports (a name that is not a module of ours is dropped)."""
    ours = modules()
    return {name: {n for n in imported_names(name, path, set(ours)) if n in ours and n != name}
            for name, path in ours.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search, colouring)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_no_module_imports_itself_round_a_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_and_names_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_level_and_type_checking_imports_are_edges_too(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .server import X\n"
                    "def f():\n    from nanogpt.cli import main\n"
                    "if __name__ == '__main__':\n    import exporter.page\n")
    names = imported_names("exporter.m", path, {"exporter.server", "nanogpt.cli", "exporter.page"})
    assert {"exporter.server", "nanogpt.cli", "exporter.page"} <= names


LINE_COUNTED = sorted({*modules().values(), *(REPO / "grafana").glob("*.py")})


@pytest.mark.parametrize("path", LINE_COUNTED, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_is_twice_the_guideline_length(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines: it holds more than one concern"


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.split(".")[0] == "exporter"))
def test_the_exporter_imports_nothing_from_the_torch_side(name):
    imports = imported_names(name, modules()[name], set(modules()))
    assert not {n for n in imports if n.split(".")[0] in TORCH_SIDE}


@pytest.mark.parametrize("name", ["nanogpt.model", "nanogpt.data", "nanogpt.train"])
def test_the_training_loop_knows_nothing_of_the_exporter_the_monitor_or_prometheus(name):
    imports = imported_names(name, modules()[name], set(modules()))
    assert not {n for n in imports if n.split(".")[0] in ("exporter", "nanogpt_monitor", "prometheus_client")}


def test_one_entry_point_for_training():
    # `nanogpt-train` and `python -m nanogpt` both run nanogpt.cli:main; no other module has a main block
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'nanogpt-train = "nanogpt.cli:main"' in pyproject
    main_blocks = {name for name, path in modules().items()
                   if name.startswith("nanogpt.") and '__name__ == "__main__"' in path.read_text()}
    # sampling is its own command; nanogpt.train's block only points to the entry point (next test)
    assert main_blocks <= {"nanogpt.__main__", "nanogpt.cli", "nanogpt.sample", "nanogpt.train"}
    assert "from nanogpt.cli import main" in (REPO / "nanogpt" / "__main__.py").read_text()


ADAPTER_TREES = ("nanogpt", "exporter", "nanogpt_monitor", "examples", "bench", "scripts")


def lines_matching(pattern: str) -> list[str]:
    """`path:line` of every line of Python in ADAPTER_TREES that matches `pattern`."""
    return [f"{path.relative_to(REPO)}:{number}"
            for tree in ADAPTER_TREES for path in sorted((REPO / tree).rglob("*.py"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if re.search(pattern, line)]


@pytest.mark.parametrize("what, pattern, home", [
    ("the run-id generator", r"def generate_run_id\b", "exporter/journal.py"),
    ("the run-id broadcast across ranks", r"broadcast_object_list\(", "nanogpt_monitor/run.py"),
    ("the rank rule (the local rank read from the environment)", r"[\"']LOCAL_RANK[\"']", "nanogpt_monitor/run.py"),
    ("the `metrics: URL` line", r"metrics: \{", "nanogpt_monitor/run.py"),
])
def test_the_adapter_s_rules_are_written_once(what, pattern, home):
    found = lines_matching(pattern)
    assert len(found) == 1 and found[0].startswith(home + ":"), f"{what}: expected once in {home}, found {found}"


def test_the_rule_finder_finds_each_line_it_is_asked_for():
    assert lines_matching(r"def lines_matching") == []  # tests/ is not searched
    assert len(lines_matching(r"^def process_rank\(")) == 1
