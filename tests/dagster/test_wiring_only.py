"""The Dagster layer only wires: short asset bodies that call one core runner, no artefact path built or
pointer read outside the core artefact store, every asset linked to its source file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sae_genomics_core.config import Home
from sae_genomics_dagster.definitions import build_definitions

DEFS = Path(__file__).resolve().parents[2] / "sae_genomics_dagster" / "defs"
MAX_BODY_LINES = 25
# what building an artefact path or reading a pointer looks like; the core ArtefactStore does it
PATH_WORK = ("CURRENT", "Path(", ".artefacts", "os.replace", "UPath(", "mkdir")


def _decorated_functions() -> list[tuple[Path, ast.FunctionDef]]:
    found = []
    for path in sorted(DEFS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.decorator_list:
                found.append((path, node))
    return found


def test_the_defs_folder_has_a_folder_per_stage() -> None:
    stages = {path.name for path in DEFS.iterdir() if (path / "__init__.py").exists()}
    assert stages == {
        *("datasets", "activations", "sae", "features", "effects", "annotations", "enrichment", "reports"),
        *("maintenance", "atlas"),
    }


@pytest.mark.parametrize("path,function", _decorated_functions(), ids=lambda v: getattr(v, "name", ""))
def test_asset_bodies_are_short(path: Path, function: ast.FunctionDef) -> None:
    lines = function.body[-1].end_lineno - function.body[0].lineno + 1  # type: ignore[operator]
    assert lines <= MAX_BODY_LINES, f"{path.name}:{function.name} has {lines} lines: move the logic to core"


@pytest.mark.parametrize("path", sorted(DEFS.rglob("*.py")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_definition_builds_a_path_or_reads_a_pointer(path: Path) -> None:
    text = path.read_text()
    assert [pattern for pattern in PATH_WORK if pattern in text] == []


def test_every_asset_links_to_its_source_file(tmp_path: Path) -> None:
    defs = build_definitions(Home(tmp_path / "home"))
    graph = defs.resolve_asset_graph()
    unlinked = []
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if not node.is_materializable:
            continue
        references = node.metadata.get("dagster/code_references")
        files = [ref.file_path for ref in references.code_references] if references else []
        if not any(str(DEFS) in file for file in files):
            unlinked.append(key.to_user_string())
    assert unlinked == []
