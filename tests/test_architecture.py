"""The import graph keeps its layers: CLI -> stages -> library, stages side by side, nothing upward.

Read from the source with `ast` (every import statement, also those inside functions),
so a rule holds whether or not a module is ever imported by a test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "whisper_moe"
ORCHESTRATING_STAGE = "pipeline"  # runs the whole pipeline, so it may call every stage
SHARED_STAGE_HELPERS = "common"
FRONT_DOOR_MODULES = ("cli", "api")
FOREIGN_TOOLS = ("kfp", "dvc")


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    """Dotted name of a source file under the package root (a package's __init__ is the package)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = PACKAGE_ROOT) -> set[str]:
    """Every module a source file imports, relative imports resolved, `from a import b` as a.b too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def source_files(root: Path = PACKAGE_ROOT) -> list[Path]:
    return sorted(root.rglob("*.py"))


def sibling_stage_imports(path: Path, root: Path = PACKAGE_ROOT) -> set[str]:
    """Stage modules (other than the shared helpers) that a module under stages/ imports."""
    own = module_name(path, root)
    stages = f"{root.name}.stages."
    return {name for name in imported_modules(path, root)
            if name.startswith(stages) and name.count(".") == 2
            and name != f"{stages}{SHARED_STAGE_HELPERS}" and name != own}


def is_under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer_of(path: Path, root: Path = PACKAGE_ROOT) -> str:
    relative = path.relative_to(root)
    if relative.parts[0] == "stages":
        return "stages"
    if relative.parts[0] in FRONT_DOOR_MODULES or relative.with_suffix("").name in FRONT_DOOR_MODULES:
        return "cli"
    return "library"


def violations(root: Path = PACKAGE_ROOT) -> list[str]:
    """Every broken rule, as 'module: what it imports (rule)'."""
    package = root.name
    found = []
    for path in source_files(root):
        name, imports = module_name(path, root), imported_modules(path, root)
        layer = layer_of(path, root)
        if layer == "stages" and path.stem != ORCHESTRATING_STAGE:
            found += [f"{name}: {other} (stages never import a sibling stage)"
                      for other in sorted(sibling_stage_imports(path, root))]
        if layer == "stages":
            found += [f"{name}: {other} (stages never import the CLI)"
                      for other in sorted(imports)
                      if any(is_under(other, f"{package}.{door}") for door in FRONT_DOOR_MODULES)]
        if layer == "stages" and "importlib" in imports:
            found.append(f"{name}: importlib (stages import each other plainly, if at all)")
        if is_under(name, f"{package}.model"):
            found += [f"{name}: {other} (model/ never imports training/)"
                      for other in sorted(imports) if is_under(other, f"{package}.training")]
        if layer == "library":
            upward = [f"{package}.stages"] + [f"{package}.{door}" for door in FRONT_DOOR_MODULES]
            found += [f"{name}: {other} (the library never imports stages or the CLI)"
                      for other in sorted(imports) if any(is_under(other, up) for up in upward)]
        found += [f"{name}: {other} (whisper_moe runs without kfp and dvc)"
                  for other in sorted(imports) if any(is_under(other, tool) for tool in FOREIGN_TOOLS)]
    return found


def test_the_package_keeps_its_import_rules():
    assert violations() == []


def library_unit(name: str, package: str = PACKAGE_ROOT.name) -> str | None:
    """The library's top-level module or subpackage a dotted name belongs to (None: not library)."""
    parts = name.split(".")
    if parts[0] != package or len(parts) < 2 or parts[1] in ("stages", *FRONT_DOOR_MODULES):
        return None
    return parts[1]


def library_cycles(root: Path = PACKAGE_ROOT) -> list[list[str]]:
    """Cycles between the library's units (model, training, data, ...): each is a layer."""
    edges: dict[str, set[str]] = {}
    for path in source_files(root):
        unit = library_unit(module_name(path, root), root.name)
        if unit is None:
            continue
        targets = {library_unit(other, root.name) for other in imported_modules(path, root)}
        edges.setdefault(unit, set()).update(t for t in targets if t and t != unit)
    cycles, state = [], {}

    def visit(unit: str, trail: list[str]) -> None:
        state[unit] = "open"
        for target in sorted(edges.get(unit, ())):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[unit] = "done"

    for unit in sorted(edges):
        if unit not in state:
            visit(unit, [unit])
    return cycles


def test_the_library_units_form_no_cycle():
    assert library_cycles() == []


def test_a_cycle_between_library_units_is_found(tmp_path):
    root = tmp_path / "whisper_moe"
    for package in ("model", "training"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "model" / "io.py").write_text("from whisper_moe.training import loop\n")
    (root / "training" / "loop.py").write_text("from whisper_moe.model import io\n")
    assert library_cycles(root) == [["model", "training", "model"]]


def test_the_pipeline_stage_runs_the_stages_it_imports():
    assert sibling_stage_imports(PACKAGE_ROOT / "stages" / f"{ORCHESTRATING_STAGE}.py") >= {
        "whisper_moe.stages.train", "whisper_moe.stages.embed"}


@pytest.mark.parametrize("relative, source, rule", [
    ("stages/cluster.py", "from whisper_moe.stages.embed import load_embeddings\n", "sibling stage"),
    ("stages/cluster.py", "def run():\n    from whisper_moe.stages import embed\n", "sibling stage"),
    ("stages/cluster.py", "from . import embed\n", "sibling stage"),
    ("stages/cluster.py", "import importlib\n", "importlib"),
    ("model/io.py", "from whisper_moe.training.checkpointing import replace_folder\n", "model/"),
    ("model/io.py", "from ..training import checkpointing\n", "model/"),
    ("artifacts.py", "from whisper_moe.stages import embed\n", "the library never"),
    ("storage.py", "from dvc.api import DVCFileSystem\n", "without kfp and dvc"),
    ("stages/train.py", "import kfp.dsl\n", "without kfp and dvc"),
    ("stages/train.py", "from whisper_moe.cli.params import params_from_args\n", "never import the CLI"),
    ("training/loop.py", "from whisper_moe.cli import main\n", "the library never"),
])
def test_each_rule_catches_its_violation(tmp_path, relative, source, rule):
    root = tmp_path / "whisper_moe"
    for package in (root, root / "stages", root / "model", root / "training"):
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text("")
    (root / "stages" / "common.py").write_text("")
    (root / relative).write_text(source)
    assert [line for line in violations(root) if rule in line] != []


def test_the_shared_helpers_and_the_pipeline_stage_are_allowed(tmp_path):
    root = tmp_path / "whisper_moe"
    (root / "stages").mkdir(parents=True)
    (root / "stages" / "common.py").write_text("")
    (root / "stages" / "train.py").write_text("from whisper_moe.stages.common import mode_rows\n")
    (root / "stages" / "pipeline.py").write_text("from whisper_moe.stages import data, train\n")
    assert violations(root) == []
