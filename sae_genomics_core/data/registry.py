"""The dataset registry: one JSON file per dataset under the home's `registry/`.

A registry entry records where the .h5ad lives and how to read it, so that every asset run for a
dataset partition reads the same file the same way. Registration is all-or-nothing: the whole
matrix is validated (and, given a model spec, the genes are checked against the model's vocab) before
anything is written, so a refused file leaves no entry behind. `quick_scan_cells` trades that for speed
on huge files: only the first cells are scanned, and the ingest run scans the rest (writing no rows if
it finds a problem there, but leaving the entry, which the caller must then say).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from sae_genomics_core.config import Home
from sae_genomics_core.data.h5ad import DatasetError, DatasetOptions, DatasetTables, Problem, inspect_h5ad
from sae_genomics_core.data.vocab_check import vocab_coverage
from sae_genomics_core.errors import SaeGenomicsError

# Dagster multi-partition keys may not contain | , [ ] ; we keep keys SQL- and URL-friendly too.
_UNSAFE = re.compile(r"[^a-z0-9_.-]+")
MAX_NAME_LENGTH = 64
# `register --quick` scans this many cells; by default registration scans all of them, as ingest does.
QUICK_SCAN_CELLS = 20_000


def sanitize_dataset_name(raw: str) -> str:
    """Turn a file stem or user-given name into a partition key: lower case, [a-z0-9_.-]."""
    name = _UNSAFE.sub("_", raw.strip().lower()).strip("_.-")[:MAX_NAME_LENGTH]
    if not name:
        raise ValueError(f"dataset name {raw!r} has no usable characters; pass --name with letters or digits")
    return name


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    path: Path
    options: DatasetOptions
    registered_at: str
    source: str  # "cli", "sensor" or "demo"
    mtime: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "path": str(self.path),
                "options": self.options.to_dict(),
                "registered_at": self.registered_at,
                "source": self.source,
                "mtime": self.mtime,
            },
            indent=2,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DatasetEntry:
        return cls(
            name=values["name"],
            path=Path(values["path"]),
            options=DatasetOptions.from_dict(values.get("options")),
            registered_at=values["registered_at"],
            source=values.get("source", "cli"),
            mtime=float(values.get("mtime", 0.0)),
        )


class DatasetNotRegistered(SaeGenomicsError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class Registry:
    def __init__(self, home: Home):
        self.home = home
        self.root = home.registry

    def _entry_path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.stem for p in self.root.glob("*.json"))

    def get(self, name: str) -> DatasetEntry:
        path = self._entry_path(name)
        if not path.exists():
            raise DatasetNotRegistered(
                f"dataset '{name}' is not registered in {self.root}; register it with "
                f"`sae-genomics register PATH --name {name}` or drop the .h5ad into {self.home.incoming}"
            )
        return DatasetEntry.from_dict(json.loads(path.read_text()))

    def find_by_path(self, path: Path) -> DatasetEntry | None:
        resolved = path.resolve()
        for name in self.names():
            entry = self.get(name)
            if entry.path == resolved:
                return entry
        return None

    def register(
        self,
        path: Path | str,
        name: str | None = None,
        options: DatasetOptions | None = None,
        *,
        source: str = "cli",
        quick_scan_cells: int | None = None,
        model_spec: str | None = None,
    ) -> tuple[DatasetEntry, DatasetTables]:
        """Validate the file (all cells unless `quick_scan_cells`; the genes against the vocab of
        `model_spec` if given), then record it. Raises `DatasetError` (nothing written) on any problem."""
        path = Path(path).expanduser().resolve()
        options = options or DatasetOptions()
        try:
            key = sanitize_dataset_name(name if name is not None else path.stem)
        except ValueError as error:
            raise DatasetError(path, [Problem(str(error), "pass --name NAME")]) from error
        existing = self._entry_path(key)
        if existing.exists():
            previous = DatasetEntry.from_dict(json.loads(existing.read_text()))
            if previous.path != path:
                raise DatasetError(
                    path,
                    [
                        Problem(
                            f"the name '{key}' is already registered for {previous.path}",
                            "pass another --name, or unregister the old one with `sae-genomics unregister "
                            f"{key}`",
                        )
                    ],
                )
        tables = inspect_h5ad(path, options, max_cells=quick_scan_cells)
        if model_spec is not None:
            coverage = vocab_coverage(tables.genes, model_spec, self.home.warehouse)
            if coverage.refused:
                raise DatasetError(path, [Problem(*coverage.problem())])
            tables.report.n_genes_in_vocab = coverage.n_in_vocab
            tables.report.vocab_check = coverage.summary()
        entry = DatasetEntry(
            name=key,
            path=path,
            options=options,
            registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
            source=source,
            mtime=path.stat().st_mtime,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        # write-then-rename so a crash never leaves a half-written entry behind
        tmp = existing.with_suffix(".json.tmp")
        tmp.write_text(entry.to_json())
        os.replace(tmp, existing)
        return entry, tables

    def unregister(self, name: str) -> None:
        path = self._entry_path(name)
        if not path.exists():
            raise DatasetNotRegistered(
                f"dataset '{name}' is not registered; known: {', '.join(self.names())}"
            )
        path.unlink()


DATASET_TABLES = ("cells", "genes", "datasets")  # the rows ingest writes for a dataset


def delete_dataset_rows(warehouse: Path, name: str) -> dict[str, int]:
    """Delete a dataset's ingest rows (cells, genes, datasets) in one transaction; rows deleted per table."""
    from sae_genomics_core.warehouse.lake import warehouse_exists
    from sae_genomics_core.warehouse.writer import write_transaction

    if not warehouse_exists(warehouse):
        return {}

    def delete(connection: duckdb.DuckDBPyConnection) -> dict[str, int]:
        present = {
            row[0]
            for row in connection.execute(
                "select table_name from information_schema.tables where table_type = 'BASE TABLE'"
            ).fetchall()
        }
        deleted = {}
        for table in DATASET_TABLES:
            if table in present:
                (count,) = connection.execute(f'delete from "{table}" where dataset = ?', [name]).fetchone()
                deleted[table] = int(count)
        return deleted

    return write_transaction(warehouse, delete)
