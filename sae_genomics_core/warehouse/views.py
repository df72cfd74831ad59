"""SQL views over the feature tables (re-created by the features and enrichment assets after they write)."""

from __future__ import annotations

import duckdb

from sae_genomics_core.warehouse.sql import table_names

_BASE = """
with top_genes as (
    select dataset, layer, feature,
           list(coalesce(symbol, ensembl_id) order by rank) filter (where rank <= 10) as top_genes,
           count(*) filter (where {gene_replicated}) as n_replicated_genes
    from feature_genes group by dataset, layer, feature
), best_type as (
    select dataset, layer, feature,
           arg_max(cell_type, ranking) as top_cell_type,
           arg_max({type_replicated}, ranking) as top_cell_type_replicated,
           arg_max(q_value, ranking) as top_cell_type_q_value,
           arg_max(log2_fold_change, ranking) as top_cell_type_log2_fold_change,
           arg_max(log2_fold_change_lower, ranking) as top_cell_type_log2_fold_change_lower
    from (
        -- replicated types first (selected on one half of the cells, confirmed on the other), then the
        -- other significant types (q ≤ 0.05) whose fold change is surely positive, each by the largest
        -- lower confidence bound of the fold change; with none, the smallest q. By q alone the largest
        -- type always wins (most cells, most power); by the fold change itself a small type with a lucky
        -- mean does (winner's curse).
        select *, case when {type_replicated} then [2, log2_fold_change_lower]
                       when q_value <= 0.05 and log2_fold_change_lower > 0 then [1, log2_fold_change_lower]
                       else [0, -coalesce(q_value, 1)] end as ranking
        from feature_cell_types
    ) group by dataset, layer, feature
){enrichment_ctes}{stability_ctes}
select s.dataset, s.layer, s.feature, s.frequency, s.fire_count, s.n_cells_active, s.mean_activation,
       s.max_activation, g.top_genes, coalesce(g.n_replicated_genes, 0) as n_replicated_genes, t.top_cell_type,
       t.top_cell_type_replicated, t.top_cell_type_q_value, t.top_cell_type_log2_fold_change,
       t.top_cell_type_log2_fold_change_lower{enrichment_columns}{stability_columns}
from feature_stats s
left join top_genes g using (dataset, layer, feature)
left join best_type t using (dataset, layer, feature){enrichment_joins}{stability_joins}
"""

# seed stability (feature_stability): stable = its one-to-one partner in every other seed is close
_STABILITY = {
    "stability_ctes": """, stability as (
    select dataset, layer, feature, bool_and(stable) as stable, min(matched_cosine) as min_seed_cosine
    from feature_stability group by dataset, layer, feature
)""",
    "stability_columns": ",\n       st.stable, st.min_seed_cosine",
    "stability_joins": "\nleft join stability st using (dataset, layer, feature)",
}
_NO_STABILITY = {
    "stability_ctes": "",
    "stability_columns": ",\n       null::boolean as stable, null::double as min_seed_cosine",
    "stability_joins": "",
}

# Only replicated claims count (significant on the whole background and on the selection half of the genes,
# and enriched on the evaluation half: enrichment.replicated). Per database the feature's best replicated
# term (most specific ones only where the database has an ontology), ranked by log10 p so that p-values
# below the smallest double still order correctly. n_databases_replicated counts independent sources: databases derived from one another (Monarch's
# gene–disease edges from HPO annotations: `derived_from` in external/sources.yaml) share one
# evidence_source and count once. Rows written before that column existed count as their own source.
_ENRICHMENT_CTES = """, best_terms as (
    select dataset, layer, feature, database,
           arg_min(term_id, log10_p_value) as term_id,
           arg_min(coalesce(term_name, term_id), log10_p_value) as term_name,  -- some sources name no term
           min(q_value) as q_value,
           any_value({evidence_source}) as evidence_source
    from enrichment
    where significant and {term_replicated} and coalesce(most_specific, true)
    group by dataset, layer, feature, database
), terms as (
    select dataset, layer, feature,
           list({{'database': database, 'term_id': term_id, 'term_name': term_name, 'q_value': q_value}}
                order by q_value, database) as top_terms,
           count(distinct evidence_source) as n_databases_replicated,
           list(database order by database) as replicated_databases
    from best_terms group by dataset, layer, feature
), term_counts as (
    select dataset, layer, feature, count(*) filter (where significant) as n_significant_terms,
           count(*) filter (where significant and {term_replicated}) as n_replicated_terms
    from enrichment group by dataset, layer, feature
)"""
_ENRICHMENT_COLUMNS = """,
       e.top_terms, e.top_terms[1].term_name as top_term, coalesce(e.n_databases_replicated, 0) as n_databases_replicated,
       e.replicated_databases, coalesce(c.n_significant_terms, 0) as n_significant_terms,
       coalesce(c.n_replicated_terms, 0) as n_replicated_terms"""
# before any enrichment: the same columns, empty, so the view's schema does not depend on what has run
_NO_ENRICHMENT_COLUMNS = """,
       null::struct(database varchar, term_id varchar, term_name varchar, q_value double)[] as top_terms,
       null::varchar as top_term, 0::bigint as n_databases_replicated, null::varchar[] as replicated_databases,
       0::bigint as n_significant_terms, 0::bigint as n_replicated_terms"""
_ENRICHMENT_JOINS = """
left join terms e using (dataset, layer, feature)
left join term_counts c using (dataset, layer, feature)"""


def feature_summary_sql(
    with_enrichment: bool,
    with_evidence_source: bool = True,
    with_stability: bool = False,
    replicated_in: tuple[str, ...] = ("feature_genes", "feature_cell_types", "enrichment"),
) -> str:
    """replicated_in: the tables that carry `replicated` (rows written before it existed never count)."""
    evidence = "coalesce(evidence_source, database)" if with_evidence_source else "database"
    replicated = {
        key: "coalesce(replicated, false)" if table in replicated_in else "false"
        for key, table in (
            ("gene_replicated", "feature_genes"),
            ("type_replicated", "feature_cell_types"),
            ("term_replicated", "enrichment"),
        )
    }
    parts = (
        {
            "enrichment_ctes": _ENRICHMENT_CTES.format(evidence_source=evidence, **replicated),
            "enrichment_columns": _ENRICHMENT_COLUMNS,
            "enrichment_joins": _ENRICHMENT_JOINS,
        }
        if with_enrichment
        else {"enrichment_ctes": "", "enrichment_columns": _NO_ENRICHMENT_COLUMNS, "enrichment_joins": ""}
    )
    parts |= _STABILITY if with_stability else _NO_STABILITY
    return "create or replace view feature_summary as\n" + _BASE.format(**parts, **replicated)


def create_feature_summary(connection: duckdb.DuckDBPyConnection) -> None:
    """(Re)create `feature_summary`; with the top term per database once `enrichment` exists, and seed
    stability once `feature_stability` does (NULL before: the schema does not depend on what has run)."""
    with_enrichment = "enrichment" in table_names(connection)
    columns = set(
        connection.execute(
            "select table_name, column_name from information_schema.columns where table_schema = 'main'"
        ).fetchall()
    )
    with_stability = "feature_stability" in table_names(connection)
    replicated_in = tuple(table for table, column in columns if column == "replicated")
    connection.execute(
        feature_summary_sql(
            with_enrichment, ("enrichment", "evidence_source") in columns, with_stability, replicated_in
        )
    )
