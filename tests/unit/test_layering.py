"""The layering of docs/architecture.md, checked so that it stays true.

- The pure plan modules of the overlay load neither grpc, pyetcd nor pyroute2, directly
  or through minikubenet modules (they are plans: they must import fast and without root).
- Nothing under ``store/`` (the etcd adapter) imports the daemons, the overlay, the lab or
  the CLI: ``store/`` maps domain objects to keys and values, never the reverse.

- No import cycles inside the package, and nothing but the entry point imports the CLI.

(The kernel side of the rules is tests/unit/test_kernel_boundary.py.)
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "minikubenet"
HEAVY = ("grpc", "pyetcd", "pyroute2")
PURE_PLANS = (
    "minikubenet.overlay.vxlan",
    "minikubenet.overlay.host_gw",
    "minikubenet.overlay.leases",
    "minikubenet.subnet_lease_record",
    "minikubenet.masquerade",
    "minikubenet.pod_network",
    "minikubenet.k8s_objects",
    "minikubenet.service_allocation",
    "minikubenet.proxy.model",
)


@pytest.mark.parametrize("module", PURE_PLANS)
def test_a_pure_plan_module_loads_no_adapter_library(module):
    # a fresh interpreter: what this one imported already must not hide an import
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} pulls in {out}"


def imported_modules(path: pathlib.Path, package: str | None = None) -> set[str]:
    """Every module name a file imports (absolute and relative), read from its source."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


FORBIDDEN_FOR_STORE = (
    "minikubenet.overlay",
    "minikubenet.agent",
    "minikubenet.lab",
    "minikubenet.cli",
    "minikubenet.proxy",
)


@pytest.mark.parametrize("path", sorted((PACKAGE / "store").glob("*.py")), ids=lambda p: p.name)
def test_store_does_not_import_the_layers_above_it(path):
    bad = sorted(n for n in imported_modules(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_FOR_STORE))
    assert not bad, f"store/{path.name} imports {bad}"


def test_the_import_reader_sees_a_violation(tmp_path):
    # the rule above can fail: absolute and relative imports of the agent and the lab are seen
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from minikubenet.agent import cni_handler\nimport minikubenet.lab.cluster\nfrom ..overlay import vxlan\n"
    )
    names = imported_modules(sample, package="minikubenet.store")
    assert {"minikubenet.agent.cni_handler", "minikubenet.lab.cluster", "minikubenet.overlay.vxlan"} <= names


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """minikubenet module -> the minikubenet modules it imports (at any depth of the file:
    a deferred import inside a function is still a dependency)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {n for n in imported_modules(path, package) if n in modules and n != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_inside_the_package():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_entry_point_imports_the_cli():
    users = sorted(
        m
        for m, deps in import_graph().items()
        if not m.startswith("minikubenet.cli")
        and m != "minikubenet.__main__"
        and any(d.startswith("minikubenet.cli") for d in deps)
    )
    assert users == [], f"{users} import the CLI; put what they share below it"


def test_only_the_store_speaks_to_etcd():
    speakers = sorted(
        m
        for m, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py"))
        if not m.startswith("minikubenet.store")
        and any(n.split(".")[0] in ("pyetcd", "grpc") for n in imported_modules(path))
    )
    assert speakers == [], f"{speakers} import the etcd client; go through minikubenet/store/"
