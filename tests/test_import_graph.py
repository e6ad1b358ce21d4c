"""The package's module-level imports form no cycle, so any module can be imported first, and
run down the layers only: base (errors, file I/O, the checkpoint format, config checks) <- data
and models <- learners <- the training engine and inference, which never import each other <-
online runs <- the command-line apps."""
import ast
from pathlib import Path

from tests.conftest import ROOT

PKG = ROOT / "metalearn"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """metalearn modules imported at the top level of `path` (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in modules}
    return found


# lowest first; a module belongs to the first layer with a prefix of its name
LAYERS = [
    ("base", ("metalearn.errors", "metalearn.threads", "metalearn.safety", "metalearn.io",
              "metalearn.checkpoint", "metalearn.config_check", "metalearn.configs",
              "metalearn.engine.preemption")),
    ("data and models", ("metalearn.data", "metalearn.models")),
    ("learners", ("metalearn.algorithms", "metalearn.build")),
    ("engine and inference", ("metalearn.engine", "metalearn.tracking", "metalearn.inference")),
    ("online", ("metalearn.online",)),
    ("apps", ("metalearn.cli", "metalearn.train", "metalearn.evaluate", "metalearn.launch")),
]
# side by side in one layer, each usable without the other
APART = [("metalearn.engine", "metalearn.inference"), ("metalearn.inference", "metalearn.engine")]


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in PKG.rglob("*.py")}
    return {m: _imports(p, set(files)) - {m} for m, p in files.items()}


def _layer(module: str) -> int:
    if module in ("metalearn", "metalearn.engine", "metalearn.online", "metalearn.algorithms",
                  "metalearn.data", "metalearn.models"):
        return 0  # package __init__ files: empty or import nothing of ours
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def test_imports_only_run_down_the_layers():
    graph = _graph()
    against = [f"{m} ({LAYERS[_layer(m)][0]}) imports {n} ({LAYERS[_layer(n)][0]})"
               for m, targets in graph.items() for n in targets if _layer(n) > _layer(m)]
    against += [f"{m} imports {n}" for m, targets in graph.items() for n in targets
                for a, b in APART if m.startswith(a) and n.startswith(b)]
    assert not against, "imports against the layers:\n" + "\n".join(sorted(against))


def test_no_import_cycles():
    graph = _graph()
    assert graph["metalearn.online.run"] >= {"metalearn.engine.loop"}  # the parser sees imports
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            assert state.get(n) != "open", "import cycle: " + " -> ".join(path + [m, n])
            if n not in state:
                visit(n, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
