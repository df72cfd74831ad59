"""Every query of the README's SQL cookbook runs against a demo warehouse and returns what it promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
