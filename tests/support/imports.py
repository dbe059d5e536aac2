"""The import graph of a package, read from its source with ``ast`` (nothing is imported
but the package's location), and the cycles in it.

Every ``import`` and ``from … import`` counts, at module level and inside functions and
classes alike: a lazy import defers a cycle to run time, it does not remove it. Imports
under ``if TYPE_CHECKING:`` are left out unless asked for, because they never run.

Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` (and of ``a``), so an import of a
module is an edge to its parent packages too, except to the importer's own parent
packages, which are already being imported when the importer runs.
"""

from __future__ import annotations

import ast
import importlib.util
from collections import deque
from pathlib import Path


def package_modules(package: str) -> dict[str, Path]:
    """Every module of the package (subpackages included): dotted name → source file."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package!r} is not a package")
    modules: dict[str, Path] = {}
    for location in spec.submodule_search_locations:
        root = Path(location)
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if any(not part.isidentifier() for part in parts):
                continue  # not importable by name (__pycache__, scripts with dashes…)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, *, type_checking: bool) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        if isinstance(node, ast.If) and not type_checking and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the ``else`` branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a ``from`` import names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    # In a package's __init__ the package itself is level 1; in a module, its parent.
    base = base if is_package else base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def imported_modules(module: str, path: Path, *, type_checking: bool = False) -> set[str]:
    """Every module the source of ``module`` imports (dotted names, inside the package or not)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _import_nodes(tree, type_checking=type_checking):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        source = _resolve(node, module, is_package)
        targets.add(source)
        # ``from pkg import name`` imports the submodule pkg.name when there is one;
        # the caller keeps only the names that are modules of the package.
        targets.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
    return {target for target in targets if target}


def import_graph(package: str, *, type_checking: bool = False) -> dict[str, set[str]]:
    """Module → the modules of the same package that importing it runs."""
    modules = package_modules(package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        own_packages = set(_ancestors(module))
        edges: set[str] = set()
        for target in imported_modules(module, path, type_checking=type_checking):
            for name in (*_ancestors(target), target):
                if name in modules and name != module and name not in own_packages:
                    edges.add(name)
        graph[module] = edges
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (no recursion limit), in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _shortest_cycle(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """The shortest path start → … → start inside one strongly connected component."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & members):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start, start]  # unreachable for a real component


def import_cycles(package: str, *, type_checking: bool = False) -> list[list[str]]:
    """The import cycles among the package's modules: one shortest cycle per group of
    modules that import each other, as a closed path (``[a, b, a]``). Empty when none."""
    graph = import_graph(package, type_checking=type_checking)
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) > 1:
            cycles.append(_shortest_cycle(graph, component[0], set(component)))
    return sorted(cycles)


def cycles_described(cycles: list[list[str]]) -> str:
    """One line per cycle, ``a → b → a``, for an assertion message."""
    return "\n".join(" → ".join(cycle) for cycle in cycles)
