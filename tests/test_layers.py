"""The package layers of docs/ARCHITECTURE.md hold: no import from a layer above, no cycle.

The table "| folder | may import |" in ARCHITECTURE.md is the rule; this test parses every `.py`
file of those folders with `ast` (imports inside functions count: a lazy import still ties the
packages together) and checks each import of one of our packages against its folder's row.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from utils.config import REPO_ROOT

TABLE_ROW = re.compile(r"^\| `([\w/]+)` \| (.*) \|$")


def layer_table(doc: Path = REPO_ROOT / "docs" / "ARCHITECTURE.md") -> dict[str, set[str]]:
    """{folder: folders it may import}, from the markdown table of the Layers section."""
    section = doc.read_text(encoding="utf-8").split("## Layers", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        if match := TABLE_ROW.match(line.strip()):
            table[match[1]] = set(re.findall(r"`([\w/]+)`", match[2]))
    assert table, f"no '| `folder` | may import |' rows under '## Layers' in {doc}"
    return table


def folder_of(module: str, table: dict[str, set[str]]) -> str | None:
    """The table row (longest folder prefix) a dotted module or a file's path belongs to."""
    path = module.replace(".", "/")
    rows = [row for row in table if path == row or path.startswith(row + "/")]
    return max(rows, key=len) if rows else None


def imported_modules(source: str, package: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file of `package`, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            # `from models.tts.valle import trainer` imports a module of that package
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def import_graph(table: dict[str, set[str]]) -> dict[str, dict[str, str]]:
    """{folder: {imported folder: 'file:line' of the first such import}} over the whole repo."""
    ours = {row.split("/")[0] for row in table}
    graph: dict[str, dict[str, str]] = {row: {} for row in table}
    for top in sorted(ours):
        for file in sorted((REPO_ROOT / top).rglob("*.py")):
            where = file.relative_to(REPO_ROOT)
            source = folder_of(".".join(where.with_suffix("").parts), table)
            assert source, f"{where}: its folder has no row in ARCHITECTURE.md's layer table"
            source_text = file.read_text(encoding="utf-8")
            for line, module in imported_modules(source_text, where.parent.parts):
                target = folder_of(module, table)
                if module.split(".")[0] in ours and target and target != source:
                    graph[source].setdefault(target, f"{where}:{line}")
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # node -> "open" while on the DFS path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:  # path: root .. node
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_package_imports_from_a_layer_above():
    table = layer_table()
    wrong = [
        f"{where}: {source}/ imports {target}/ (allowed: {', '.join(sorted(table[source])) or '-'})"
        for source, targets in import_graph(table).items()
        for target, where in targets.items()
        if not any(target == ok or target.startswith(ok + "/") for ok in table[source])
    ]
    assert not wrong, "imports against docs/ARCHITECTURE.md's layers:\n" + "\n".join(wrong)


def test_no_import_cycle_between_packages():
    table = layer_table()
    graph = import_graph(table)
    for depth in (1, None):  # top-level packages (models <-> preprocessors), then table folders
        edges: dict[str, set[str]] = {}
        for source, targets in graph.items():
            for target in targets:
                a, b = "/".join(source.split("/")[:depth]), "/".join(target.split("/")[:depth])
                if a != b:
                    edges.setdefault(a, set()).add(b)
        cycle = find_cycle(edges)
        assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_sees_lazy_relative_imports_and_cycles():
    source = "from . import dataset\n\ndef f():\n    from preprocessors.g2p import phonemize\n"
    assert imported_modules(source, ("models", "tts", "valle")) == [
        (1, "models.tts.valle.dataset"),
        (4, "preprocessors.g2p.phonemize"),
    ]
    table = {"models": set(), "models/tts": {"utils"}, "utils": set()}
    assert folder_of("models.tts.valle.x", table) == "models/tts"
    assert folder_of("models.x", table) == "models" and folder_of("torch.nn", table) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}}) is None
