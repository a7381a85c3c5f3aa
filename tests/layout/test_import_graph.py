"""The package's import graph: imports point down the layers and never form a cycle.

Layers, low to high (DESIGN.md): kernels / _C < ops < shared code (config, checkpoint, utils,
data, models, optim, sparsity) < domains (unlearn, llm, backdoor, blo, attacks, watermark,
faces, diffusion, prompts) < experiments, cli, demo, _bench, info. Every `import` counts,
module-level or inside a function, except under `if __name__ == "__main__":` (a script entry,
not a library import) and `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {
    "trustfast.kernels": 0, "trustfast._C": 0, "trustfast._ext": 0, "trustfast._meta": 0,
    "trustfast.checks": 0,
    "trustfast.ops": 1,
    "trustfast.config": 2, "trustfast.checkpoint": 2, "trustfast.utils": 2,
    "trustfast.data": 2, "trustfast.models": 2, "trustfast.optim": 2, "trustfast.sparsity": 2,
    "trustfast.metrics": 2,
    "trustfast.unlearn": 3, "trustfast.llm": 3, "trustfast.backdoor": 3, "trustfast.blo": 3,
    "trustfast.attacks": 3, "trustfast.watermark": 3, "trustfast.faces": 3,
    "trustfast.diffusion": 3, "trustfast.prompts": 3,
    "trustfast.experiments": 4, "trustfast.cli": 4, "trustfast.demo": 4, "trustfast._bench": 4,
    "trustfast.info": 4, "trustfast.__main__": 4,
}
TOP = 5  # the package's own __init__ may re-export anything


def _modules() -> dict[str, Path]:
    found = {}
    for base, name in ((ROOT / "trustfast", "trustfast"), (ROOT / "kernels", "trustfast.kernels")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([name, *parts])] = path
    return found


def _is_guard(node: ast.If) -> bool:
    test = ast.unparse(node.test)
    return test in ("__name__ == '__main__'", 'TYPE_CHECKING', 'typing.TYPE_CHECKING')


def _imports(path: Path, module: str, is_package: bool, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_guard(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import submodule` depends on the submodule; pkg is only its parent
            names = [f"{target}.{a.name}" for a in node.names]
            submodules = [n for n in names if n in known]
            out.update(submodules)
            if len(submodules) < len(names):
                out.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = _imports(path, name, path.name == "__init__.py", set(modules))
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _layer(module: str) -> int:
    if module == "trustfast":
        return TOP
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len,
               default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return LAYERS[best]


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if _layer(target) > _layer(module):
                upward.append(f"{module} ({_layer(module)}) imports {target} ({_layer(target)})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                dfs(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_kernels_and_ops_hold_no_domain_logic():
    graph = _graph()
    for module, targets in graph.items():
        if _layer(module) <= 1:
            bad = [t for t in targets if _layer(t) >= 3]
            assert not bad, f"{module} imports domain code {bad}"
