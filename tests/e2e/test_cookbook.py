"""Every query of the README's SQL cookbook, and every `sae-genomics sql` command in its shell blocks, runs
against a demo warehouse and returns what it promises."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from sae_genomics_core.cli import main
from sae_genomics_core.config import HOME_ENV
from sae_genomics_core.warehouse.sql import run_query

README = Path(__file__).resolve().parents[2] / "README.md"


def cookbook_queries() -> list[str]:
    section = README.read_text().split("## SQL cookbook", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sql\n(.*?)```", section, flags=re.S)]


def test_the_cookbook_has_at_least_five_queries() -> None:
    assert len(cookbook_queries()) >= 5


@pytest.fixture(scope="module")
def warehouse(demo_home: Path) -> Path:
    return demo_home / "warehouse.duckdb"


@pytest.mark.parametrize("index", range(len(cookbook_queries())))
def test_cookbook_query_runs(warehouse: Path, index: int) -> None:
    query = cookbook_queries()[index]
    frame = run_query(warehouse, query.rstrip(";"))
    # every query but the gene lookup of a gene the demo may not rank is expected to return rows
    assert frame.height > 0 or "symbol = 'LYZ'" in query, query


def readme_sql_commands() -> list[list[str]]:
    """The arguments of each `sae-genomics sql …` line of the README's shell blocks (an environment
    prefix and a trailing comment dropped: they run on the demo home)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if "sae-genomics sql " in line]
    return [shlex.split(line.split("sae-genomics ", 1)[1], comments=True) for line in lines]


def test_the_readme_has_its_sql_commands() -> None:
    assert len(readme_sql_commands()) >= 6


@pytest.mark.parametrize("index", range(len(readme_sql_commands())))
def test_readme_sql_command_runs(
    demo_home: Path, index: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = readme_sql_commands()[index]
    monkeypatch.setenv(HOME_ENV, str(demo_home))
    assert main(arguments) == 0, (arguments, capsys.readouterr().err)
    out = capsys.readouterr().out
    if "json" in arguments:
        assert json.loads(out), arguments  # a non-empty list of rows
    else:
        assert len(out.strip().splitlines()) >= 2, (arguments, out)  # a header and rows
