"""The package's import graph: no circles, and nothing reaching up.

The graph is read from the source (``ast``), not by importing: an edge ``a -> b`` is an
``import`` of ``b`` (or of a name from it) in ``a``. Circles are counted over module-level
imports, the ones Python runs at import time; the layering rules count every import,
function-level ones included.
"""

from __future__ import annotations

import ast
import pathlib

import overlaynet

PACKAGE = pathlib.Path(overlaynet.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements run at import: the body, and inside module-level if/try (not TYPE_CHECKING)."""
    found: list[ast.stmt] = []
    for node in body:
        if _is_type_checking(node):
            continue
        found.append(node)
        if isinstance(node, ast.If):
            found += _module_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            found += _module_level(node.body + node.orelse + node.finalbody
                                   + [s for h in node.handlers for s in h.body])
    return found


def _everywhere(node: ast.AST) -> list[ast.AST]:
    """Every node under ``node`` but what ``if TYPE_CHECKING:`` holds (never run)."""
    found: list[ast.AST] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt) and _is_type_checking(child):
            continue
        found.append(child)
        found += _everywhere(child)
    return found


def imports(module: str, module_level_only: bool) -> set[str]:
    """The overlaynet modules ``module`` imports (at import time, or anywhere), type-only imports aside."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = _module_level(tree.body) if module_level_only else _everywhere(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    named: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in named if name in MODULES and name != module}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle_of_three_and_not_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_reader_sees_conditional_imports_and_skips_type_only_ones():
    tree = ast.parse("import os\nif True:\n    from overlaynet import names\ndef f():\n    import overlaynet.errors\n"
                     "if TYPE_CHECKING:\n    import overlaynet.kernel\n")
    assert [type(n).__name__ for n in _module_level(tree.body)] == ["Import", "If", "ImportFrom", "FunctionDef"]
    everywhere = [ast.unparse(n) for n in _everywhere(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert everywhere == ["import os", "from overlaynet import names", "import overlaynet.errors"]


def test_no_import_cycle_inside_overlaynet():
    graph = {module: imports(module, module_level_only=True) for module in MODULES}
    assert cycles(graph) == []


def test_the_agent_never_imports_the_controller():
    """The agent reports probe results through the callback ``__main__`` (the edge) gives it."""
    reaching = {module: sorted(name for name in imports(module, module_level_only=False)
                               if name.startswith("overlaynet.control"))
                for module in MODULES
                if module.startswith("overlaynet.agent") and module != "overlaynet.agent.__main__"}
    assert {module: names for module, names in reaching.items() if names} == {}


def test_node_components_never_reach_up_to_the_controllers():
    """What a node runs gets the store, the seams, the records; never the manager or a controller."""
    above = ("overlaynet.control.manager", "overlaynet.control.pods", "overlaynet.control.deployments",
             "overlaynet.control.node_ipam", "overlaynet.control.offline", "overlaynet.cli", "overlaynet.tools")
    reaching = {module: sorted(name for name in imports(module, module_level_only=False) if name.startswith(above))
                for module in MODULES if module.startswith("overlaynet.node")}
    assert {module: names for module, names in reaching.items() if names} == {}


def test_kube_proxy_and_the_routes_reach_the_kernel_only_through_the_seams():
    for module in ("overlaynet.node.proxier", "overlaynet.node.routes", "overlaynet.node.bgp_mesh",
                   "overlaynet.control.manager", "overlaynet.control.pods", "overlaynet.node.netpol_sync",
                   "overlaynet.control.policies", "overlaynet.policy.semantics", "overlaynet.policy.render"):
        kernel = sorted(name for name in imports(module, module_level_only=False) if name.startswith("overlaynet.kernel"))
        assert kernel == [], module
