"""The package's import structure: no cycle among the gsil modules' top-level imports, one IGNORE_INDEX.

Read from the source with `ast` (nothing is imported). "Top-level" is what runs when a module is imported: module
and class bodies, including `if`/`try`/`with` blocks, but not function bodies (lazy imports) and not
`if TYPE_CHECKING:` blocks. `from gsil.a import b` is an edge to the module `gsil.a.b` where that is a module, else to
`gsil.a`. Run as a script to print the import map (`--lazy`: with the imports inside functions too).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "workflow" / "gsil"


def module_name(path: Path) -> str:
    parts = ("gsil",) + path.relative_to(PACKAGE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def gsil_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def top_level_imports(tree: ast.Module, *, lazy: bool = False):
    """The Import / ImportFrom nodes that run when the module is imported (`lazy`: and those inside functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not lazy:
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        elif isinstance(node, ast.stmt):
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
            for handler in getattr(node, "handlers", ()):
                stack.extend(handler.body)


def import_graph(*, lazy: bool = False) -> dict[str, set[str]]:
    """gsil module -> the gsil modules its top-level imports load (`lazy`: its imports inside functions too)."""
    modules = gsil_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in top_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path)), lazy=lazy):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            edges.update(target for target in targets if target in modules and target != name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def constant_definitions(constant: str) -> list[str]:
    """`module:line` of every assignment to `constant` anywhere in the package."""
    found = []
    for name, path in gsil_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AnnAssign, ast.AugAssign)) else []
            if any(isinstance(t, ast.Name) and t.id == constant for t in targets):
                found.append(f"{name}:{node.lineno}")
    return found


def test_the_graph_sees_known_imports():
    graph = import_graph()
    assert "gsil.logutil" in graph["gsil.tokenization"]
    assert "gsil.tokenization" in graph["gsil.packing"]
    assert "gsil.generation.run" in graph["gsil.generation"]


def test_no_import_cycle_among_gsil_modules():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles among gsil modules' top-level imports: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_packing_knows_nothing_of_models():
    graph = import_graph(lazy=True)
    assert not graph["gsil.packing"] & {"gsil.modeling", "gsil.logprobs"}


def test_model_and_generation_modules_sit_on_no_cycle_even_through_lazy_imports():
    # Imports inside functions break a cycle at import time only; these modules are kept out of cycles altogether.
    members = {"gsil.logprobs", "gsil.packing", "gsil.modeling", "gsil.tokenization"}
    for cycle in import_cycles(import_graph(lazy=True)):
        assert not (set(cycle) & members or any(m.startswith("gsil.generation") for m in cycle)), cycle


def test_ignore_index_is_defined_once_in_tokenization():
    definitions = constant_definitions("IGNORE_INDEX")
    assert len(definitions) == 1 and definitions[0].startswith("gsil.tokenization:"), definitions


if __name__ == "__main__":
    graph = import_graph(lazy="--lazy" in sys.argv)
    for module in sorted(graph):
        print(f"{module}: {', '.join(sorted(graph[module])) or '-'}")
    cycles = import_cycles(graph)
    print("cycles:", cycles or "none")
    print("IGNORE_INDEX:", constant_definitions("IGNORE_INDEX"))
    sys.exit(1 if cycles else 0)
