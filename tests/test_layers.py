"""ARCHITECTURE.md's layer rule, checked: every import inside the package goes to its own layer
or to one above it in the table (the table's paths decide which layer a file is in)."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gradalign_fast"


def _layers() -> list[tuple[str, list[str]]]:
    """(layer, [path prefixes]) in the order of ARCHITECTURE.md's table."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text[text.index("## Layers"):text.index("## One GradAlign training step")]
    rows = re.findall(r"^\| (\w+) \| (.*?) \|", section, re.M)
    layers = [(name, [p for p in re.findall(r"`([^`]+)`", where)
                      if p.startswith("gradalign_fast/")])
              for name, where in rows if name != "layer"]
    assert len(layers) >= 6, layers
    return layers


def _layer_of(path: str, layers) -> int:
    """Index of the layer holding `path` (the longest matching prefix of the table)."""
    hits = [(len(prefix), i) for i, (_, prefixes) in enumerate(layers) for prefix in prefixes
            if path == prefix or path.startswith(prefix.rstrip("/") + "/")]
    assert hits, f"{path} is in no layer of ARCHITECTURE.md's table"
    return max(hits)[1]


def _module_path(dotted: str) -> str | None:
    """gradalign_fast.a.b -> 'gradalign_fast/a/b.py' or '.../b/__init__.py', the compiled
    gradalign_fast._C -> 'gradalign_fast/_C'; None for anything else."""
    parts = dotted.split(".")
    if parts[0] != "gradalign_fast":
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return str(candidate.relative_to(ROOT))
    if dotted == "gradalign_fast._C":
        return "gradalign_fast/_C"
    return None


def _imports(rel: str, source: str):
    """(imported package module, line) of the file at `rel` holding `source`: relative imports
    resolved, `from X import name` taken as the module X.name where that is one."""
    module = rel.removesuffix(".py").replace("/", ".")
    package = module.removesuffix(".__init__") if rel.endswith("__init__.py") else \
        module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if _module_path(sub) else target), node.lineno


def violations(files: dict[str, str]) -> list[str]:
    """Imports going to a lower layer, for {repository-relative path: source}."""
    layers, bad = _layers(), []
    for rel, source in sorted(files.items()):
        own = _layer_of(rel, layers)
        for target, line in _imports(rel, source):
            target_path = _module_path(target)
            if target_path is not None and _layer_of(target_path, layers) > own:
                other = _layer_of(target_path, layers)
                bad.append(f"{rel}:{line} ({layers[own][0]}) imports {target} "
                           f"({layers[other][0]})")
    return bad


def test_every_import_respects_the_layers():
    files = {str(p.relative_to(ROOT)): p.read_text() for p in PACKAGE.rglob("*.py")}
    bad = violations(files)
    assert not bad, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(bad)


def test_the_check_catches_an_upward_import():
    bad = violations({"gradalign_fast/attacks.py": "from .training import trainer\n",
                      "gradalign_fast/training/methods.py": "from ..cli import main\n"})
    assert len(bad) == 2 and "(core) imports gradalign_fast.training.trainer (training)" in bad[0]
