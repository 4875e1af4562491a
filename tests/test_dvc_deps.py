"""dvc.yaml cannot miss a code dependency: every module a stage's command can import is a dep.

The closure is static (every `import` in every function, not only the ones a run
happens to reach), so a module imported lazily by one branch of a stage still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src"
PACKAGE = "whisper_moe"


def module_file(name: str) -> Path | None:
    """The file that defines module `name` under src/, or None if it is not ours."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path, module: str) -> set[str]:
    """Every whisper_moe module named by an import anywhere in the file (functions too)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}


def import_closure(start: str) -> set[Path]:
    """Files of all whisper_moe modules reachable from `start`, parent packages included."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = module_file(name)
        if path is None:
            continue
        files.add(path)
        todo.extend(imported_names(path, name))
    return files


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO_ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


def cli_stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    def command(stage: dict) -> str:
        cmd = stage["cmd"]
        return " ".join(cmd) if isinstance(cmd, list) else str(cmd)

    return {name: stage for name, stage in stages.items()
            if command(stage).strip().startswith("whisper-moe ")}


def test_the_closure_sees_lazy_imports():
    files = {path.relative_to(SRC).as_posix() for path in import_closure(f"{PACKAGE}.cli")}
    # the CLI imports the stages inside its handlers and the stages import features lazily
    assert "whisper_moe/data/features.py" in files
    assert any(name.startswith("whisper_moe/stages/") for name in files)
    assert "whisper_moe/__init__.py" in files


def test_every_module_a_stage_imports_is_a_dependency():
    stages = cli_stages()
    assert {"data", "regular_train", "regular_evaluate", "embed", "compare"} <= set(stages)
    closure = import_closure(f"{PACKAGE}.cli")
    for name, stage in stages.items():
        deps = [str(dep) for dep in stage.get("deps", [])]
        missing = sorted(str(path.relative_to(REPO_ROOT)) for path in closure
                         if not covered(path, deps))
        assert not missing, f"stage {name!r} does not depend on {missing[:5]} (and {len(missing)} in all)"


def test_a_narrow_dependency_list_is_caught():
    closure = import_closure(f"{PACKAGE}.cli")
    narrow = ["src/whisper_moe/stages", "src/whisper_moe/model"]
    assert any(not covered(path, narrow) for path in closure)
