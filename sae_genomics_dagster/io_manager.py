"""The warehouse IO manager: dagster-duckdb with polars frames, made safe for many processes.

Compared with the stock DuckDBPolarsIOManager, each write is one transaction (delete the partition
slice, insert the new rows) under a cross-process file lock, so a failure half-way leaves the previous
good rows, and parallel runs queue for the single DuckDB writer instead of failing on its lock.
Rows are inserted BY NAME and new columns are added, so a table keeps working as its asset gains
columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import duckdb
import polars as pl
from dagster._core.storage.db_io_manager import DbIOManager, DbTypeHandler, TableSlice
from dagster_duckdb.io_manager import DuckDbClient, DuckDBIOManager
from pydantic import Field

from sae_genomics_core.warehouse.lake import is_lake, retry_conflicts
from sae_genomics_core.warehouse.schema import TABLES
from sae_genomics_core.warehouse.writer import LOCK_TIMEOUT_S, warehouse_writer


def _table_exists(connection: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    row = connection.execute(
        "select 1 from information_schema.tables where table_schema = ? and table_name = ?", [schema, table]
    ).fetchone()
    return row is not None


def _quoted(table_slice: TableSlice) -> str:
    return f'"{table_slice.schema}"."{table_slice.table}"'


def table_metadata(table: str, frame: pl.DataFrame, partitioned: bool) -> dict[str, Any]:
    """Row count and column schema (with the public contract's descriptions) of a written table."""
    described = TABLES.get(table, {})
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name=name, type=str(dtype), description=described.get(name, ("", ""))[1] or None)
            for name, dtype in frame.schema.items()
        ]
    )
    row_key = "dagster/partition_row_count" if partitioned else "dagster/row_count"
    return {row_key: frame.height, "dagster/column_schema": schema}


class TransactionalDuckDbClient(DuckDbClient):
    @staticmethod
    def delete_table_slice(context: dg.OutputContext, table_slice: TableSlice, connection: Any) -> None:
        # a failed DELETE on a missing table would abort the surrounding transaction
        if _table_exists(connection, table_slice.schema, table_slice.table):
            DuckDbClient.delete_table_slice(context, table_slice, connection)

    @staticmethod
    @contextmanager
    def connect(context: Any, _: TableSlice) -> Iterator[duckdb.DuckDBPyConnection]:
        config = {"custom_user_agent": "sae-genomics", **context.resource_config["connection_config"]}
        timeout = context.resource_config["lock_timeout_s"]
        with warehouse_writer(context.resource_config["database"], config, timeout) as connection:
            yield connection


class PolarsByNameTypeHandler(DbTypeHandler[pl.DataFrame]):
    def handle_output(
        self, context: dg.OutputContext, table_slice: TableSlice, obj: pl.DataFrame, connection: Any
    ) -> dict[str, Any]:
        target = _quoted(table_slice)
        arrow = obj.to_arrow()
        connection.register("incoming_frame", arrow)
        try:
            if not _table_exists(connection, table_slice.schema, table_slice.table):
                connection.execute(f"create table {target} as select * from incoming_frame")
            else:
                present = {
                    row[0]
                    for row in connection.execute(
                        "select column_name from information_schema.columns where table_schema = ? "
                        "and table_name = ?",
                        [table_slice.schema, table_slice.table],
                    ).fetchall()
                }
                missing = [
                    (name, sql_type)
                    for name, sql_type, *_ in connection.execute(
                        "describe select * from incoming_frame"
                    ).fetchall()
                    if name not in present
                ]
                if missing:
                    # DuckDB will not commit an ALTER in the transaction that deleted the slice: undo the
                    # delete, add the columns in a transaction of their own, then delete and insert again
                    connection.execute("rollback")
                    connection.execute("begin transaction")
                    for name, sql_type in missing:
                        connection.execute(f'alter table {target} add column "{name}" {sql_type}')
                    connection.execute("commit")
                    connection.execute("begin transaction")
                    DuckDbClient.delete_table_slice(context, table_slice, connection)
                    connection.register("incoming_frame", arrow)  # the rollback dropped the view
                connection.execute(f"insert into {target} by name select * from incoming_frame")
            (total,) = connection.execute(f"select count(*) from {target}").fetchone()
        finally:
            connection.unregister("incoming_frame")
        metadata = table_metadata(table_slice.table, obj, partitioned=bool(table_slice.partition_dimensions))
        if table_slice.partition_dimensions:
            metadata["table_rows_all_partitions"] = int(total)
        return metadata

    def load_input(self, context: dg.InputContext, table_slice: TableSlice, connection: Any) -> pl.DataFrame:
        if table_slice.partition_dimensions and len(context.asset_partition_keys) == 0:
            return pl.DataFrame()
        return connection.sql(DuckDbClient.get_select_statement(table_slice)).pl()

    @property
    def supported_types(self) -> Sequence[type]:
        return [pl.DataFrame]


class _InstanceAwareDbIOManager(DbIOManager):
    # DbIOManager resolves multi-partition keys with a dynamic dimension without the instance at hand
    # ("The instance is not available to load partitions"); give it the step's instance.
    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        def write() -> None:
            with dg.partition_loading_context(dynamic_partitions_store=context.step_context.instance):
                super(_InstanceAwareDbIOManager, self).handle_output(context, obj)

        # a DuckLake write that loses a commit race to another worker runs again, whole
        retry_conflicts(write) if is_lake(context.resource_config["database"]) else write()

    def load_input(self, context: dg.InputContext) -> object:
        with dg.partition_loading_context(dynamic_partitions_store=context.instance):
            return super().load_input(context)


class WarehouseIOManager(DuckDBIOManager):
    """Writes polars frames to the DuckDB warehouse, one transaction per partition slice."""

    lock_timeout_s: float = Field(
        default=LOCK_TIMEOUT_S, description="how long a write waits for the warehouse lock"
    )

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return [PolarsByNameTypeHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        return pl.DataFrame

    def create_io_manager(self, context: Any) -> DbIOManager:
        return _InstanceAwareDbIOManager(
            db_client=TransactionalDuckDbClient(),
            database=self.database,
            schema=self.schema_,
            type_handlers=self.type_handlers(),
            default_load_type=self.default_load_type(),
            io_manager_name="WarehouseIOManager",
        )
