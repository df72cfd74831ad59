"""SQL views over the feature tables (created by the features asset after it writes them)."""

FEATURE_SUMMARY = """
create or replace view feature_summary as
with top_genes as (
    select dataset, layer, feature,
           list(coalesce(symbol, ensembl_id) order by rank) filter (where rank <= 10) as top_genes
    from feature_genes group by dataset, layer, feature
), best_type as (
    select dataset, layer, feature,
           arg_min(cell_type, q_value) as top_cell_type,
           min(q_value) as top_cell_type_q_value,
           arg_min(log2_fold_change, q_value) as top_cell_type_log2_fold_change
    from feature_cell_types group by dataset, layer, feature
)
select s.dataset, s.layer, s.feature, s.frequency, s.fire_count, s.n_cells_active, s.mean_activation,
       s.max_activation, g.top_genes, t.top_cell_type, t.top_cell_type_q_value, t.top_cell_type_log2_fold_change
from feature_stats s
left join top_genes g using (dataset, layer, feature)
left join best_type t using (dataset, layer, feature)
"""
