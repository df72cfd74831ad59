"""Feature pages: one self-contained HTML explorer per dataset × layer, rebuilt from the warehouse.

In the spirit of Neuronpedia's feature pages, with the biology: search by gene, term or cell type; one
page per feature (`index.html#feature=42`) with a short label from its replicated claims, its top genes
(linked to HGNC, Ensembl, Open Targets, STRING and Monarch), top cells, cell types, activation
histogram, where it sits in the layer's density, its enrichment with q-values, its nearest features by
decoder cosine in this SAE and its matches in other layers and datasets, and the layer's SAE vs PCA vs
random baseline rates; every table downloads as CSV. Everything (data, the Vega-Lite renderer from
vl-convert's bundle) is inside the one file, so it opens offline, from a file:// URL or any static host,
and never rots with a hosted service (InterPLM's dashboards did).
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from sae_genomics_core.errors import SaeGenomicsError
from sae_genomics_core.warehouse.sql import connect_read_only, table_names

TOP_GENES, TOP_CELLS = 20, 10
TOP_EFFECT_GENES = 5  # per feature, intervention and direction
TERMS_PER_DATABASE = 5  # best rows of each database per feature, plus every significant row
# a cell type is shown as a finding only with q < 0.05, a lower bound above 0 and at least this fold
# change (2^0.5 = 1.41×): with thousands of cells, log2 FC 0.1 reaches q 1e-60 and means little
MIN_LOG2_FOLD_CHANGE = 0.5
PAGE_DIGITS = 4  # significant digits of a float on the pages (and in their CSV downloads)
MAP_LEVELS = 255  # a map cell's activation as a byte: level / 255 of the feature's maximum there
SIMILAR = 5  # nearest features by decoder cosine, per feature
SIMILAR_CHUNK_ROWS = 1024  # rows per product: 1024 × 16,384 floats, never the d_sae × d_sae matrix


@dataclass(frozen=True)
class PagesResult:
    path: Path
    n_features: int
    n_bytes: int


class PagesUnavailable(SaeGenomicsError, ValueError):
    """The feature tables of this dataset × layer are not there yet."""


# what a page shows, by key of the page data; every query takes (dataset, layer)
_REQUIRED_QUERIES = {  # the feature tables, there whenever feature_stats has the layer
    "stats": "select feature, fire_count, frequency, mean_activation, max_activation, n_cells_active "
    "from feature_stats where dataset = ? and layer = ? order by feature",
    "genes": "select feature, rank, coalesce(symbol, ensembl_id) as gene, ensembl_id, score, specificity, n_tokens, "
    "selected, replicated, held_out_specificity "
    f"from feature_genes where dataset = ? and layer = ? and rank <= {TOP_GENES} order by feature, rank",
    "cells": "select fc.feature, fc.rank, fc.cell_index, fc.cell_id, c.cell_type, fc.max_activation from feature_cells fc "
    "left join cells c on c.dataset = fc.dataset and c.cell_index = fc.cell_index "
    f"where fc.dataset = ? and fc.layer = ? and fc.rank <= {TOP_CELLS} order by fc.feature, fc.rank",
    "cell_types": "select feature, cell_type, mean_activation, frac_active, log2_fold_change, log2_fold_change_lower, "
    "q_value, test_unit, n_units, selected, replicated, held_out_log2_fold_change "
    "from feature_cell_types where dataset = ? and layer = ? order by feature, q_value",
}
_OPTIONAL_QUERIES = {  # key: (the table it needs, else the page shows none, query)
    "cell_genes": (  # the genes firing in each top cell shown
        "feature_cell_genes",
        "select feature, cell_rank, coalesce(symbol, ensembl_id) as gene, activation, expression_bin "
        f"from feature_cell_genes where dataset = ? and layer = ? and cell_rank <= {TOP_CELLS} "
        "order by feature, cell_rank, rank",
    ),
    "histograms": (
        "feature_histograms",
        "select feature, bin_start, bin_end, n_cells from feature_histograms where dataset = ? and layer = ? order by feature, bin",
    ),
    "enrichment": (
        "enrichment",
        "select feature, database, term_id, term_name, overlap, feature_set_size, term_size, odds_ratio, "
        "log10_p_value, q_value, significant, most_specific, overlap_genes, selected, replicated, "
        "held_out_odds_ratio from ("
        "  select *, row_number() over (partition by feature, database order by log10_p_value) as position "
        "  from enrichment where dataset = ? and layer = ?"
        f") where position <= {TERMS_PER_DATABASE} or significant or replicated "
        "order by feature, log10_p_value",
    ),
    "matches": (  # the feature's best match in other layers and datasets, when above chance
        "feature_matches",
        "select feature, other_dataset, other_layer, best_match, round(best_cosine, 3) as best_cosine, "
        "mutual, matched_feature, round(matched_cosine, 3) as matched_cosine, "
        "round(chance_cosine, 3) as chance_cosine "
        "from feature_matches where dataset = ? and layer = ? and best_cosine > chance_cosine "
        "order by feature, other_dataset, other_layer",
    ),
    "baselines": (
        "enrichment_baselines",
        "select database, method, n_units, n_units_tested, n_units_significant, fraction_significant "
        "from enrichment_baselines where dataset = ? and layer = ? order by database, method",
    ),
    "sae": (  # every column: older warehouses lack the newer ones (loss recovered), which then stay empty
        "sae_checkpoints",
        "select * from sae_checkpoints where dataset = ? and layer = ?",
    ),
    "stability": (
        "feature_stability",
        "select feature, bool_and(stable) as stable, min(matched_cosine) as min_seed_cosine "
        "from feature_stability where dataset = ? and layer = ? group by feature order by feature",
    ),
    "seed_summary": (
        "sae_stability",
        "select * from sae_stability where dataset = ? and layer = ?",
    ),
    "effects": (  # ablation, and steering at the strongest strength, top genes each way
        "feature_effects",
        "select feature, intervention, strength, cells, direction, rank, coalesce(symbol, ensembl_id) as gene, effect, "
        "effect_sd, consistency, n_cells from ("
        "  select *, max(strength) over () as strongest from feature_effects where dataset = ? and layer = ?"
        f") where rank <= {TOP_EFFECT_GENES} and (intervention = 'ablate' or strength = strongest) "
        "order by feature, intervention, cells, direction, rank",
    ),
    "effect_types": (
        "feature_effect_cell_types",
        "select feature, cell_type, cosine_shift, n_cells from ("
        "  select *, max(strength) over () as strongest from feature_effect_cell_types where dataset = ? and layer = ?"
        ") where intervention = 'steer' and strength = strongest and cells = 'silent' order by feature, cosine_shift desc",
    ),
}

_ALL_QUERIES = " ".join([*_REQUIRED_QUERIES.values(), *(sql for _, sql in _OPTIONAL_QUERIES.values())])
# the tables the pages read, in query order (the orchestrator makes the pages depend on exactly these)
PAGE_TABLES = tuple(dict.fromkeys(re.findall(r"\b(?:from|join) ([a-z_]+)", _ALL_QUERIES)))


def _frame(
    connection: duckdb.DuckDBPyConnection, sql: str, params: list[Any], tables: set[str], needs: str
) -> pl.DataFrame | None:
    return connection.execute(sql, params).pl() if needs in tables else None


def collect(warehouse: Path, dataset: str, layer: int, similar: pl.DataFrame | None = None) -> dict[str, Any]:
    """Everything a page shows, as JSON-ready columns (compact: one list per column); `similar` is
    `similar_features` of the SAE the feature tables came from (None: the pages show no neighbours)."""
    with connect_read_only(Path(warehouse)) as connection:
        tables = table_names(connection)
        key = [dataset, layer]
        _require_feature_stats(connection, tables, dataset, layer)
        frames: dict[str, pl.DataFrame | None] = {
            name: connection.execute(sql, key).pl() for name, sql in _REQUIRED_QUERIES.items()
        }
        for name, (needs, sql) in _OPTIONAL_QUERIES.items():
            frames[name] = _frame(connection, sql, key, tables, needs)
        cell_map = _cell_map(connection, tables, dataset, layer)
        layers = _layers(connection, tables, dataset)
    sae, seeds = frames.pop("sae"), frames.pop("seed_summary")
    return {
        "dataset": dataset,
        "layer": layer,
        "sae": sae.row(0, named=True) if sae is not None and sae.height else {},
        "seeds": seeds.row(0, named=True) if seeds is not None and seeds.height else {},
        "similar": _columns(similar),
        "map": cell_map,
        "layers": layers,
        **{name: _columns(frame) for name, frame in frames.items()},
    }


def _layers(connection: duckdb.DuckDBPyConnection, tables: set[str], dataset: str) -> list[dict[str, Any]]:
    """What the layer switcher offers: the dataset's extracted layers (activation_sets), each `built` when
    it has feature tables (its pages follow them; over http the switcher asks before it goes)."""

    def layers_in(table: str) -> set[int]:
        if table not in tables:
            return set()
        sql = f"select distinct layer from {table} where dataset = ?"
        return {row[0] for row in connection.execute(sql, [dataset]).fetchall()}

    built = layers_in("feature_stats")
    return [{"layer": n, "built": n in built} for n in sorted(built | layers_in("activation_sets"))]


def _cell_map(
    connection: duckdb.DuckDBPyConnection, tables: set[str], dataset: str, layer: int
) -> dict[str, Any]:
    """The cells drawn on the dataset's UMAP and each feature's activations there, packed (see _packed);
    empty without a map: cells ingested before it, or this layer's feature tables older than
    feature_cell_map (no rows of it)."""
    has_map = (
        "feature_cell_map" in tables
        and connection.execute(
            "select count(*) from information_schema.columns where table_name = 'cells' and column_name = 'umap_1'"
        ).fetchone()[0]  # type: ignore[index]
        and connection.execute(
            "select count(*) from (select 1 from feature_cell_map where dataset = ? and layer = ? limit 1)",
            [dataset, layer],
        ).fetchone()[0]  # type: ignore[index]
    )
    if not has_map:
        return {}
    drawn = connection.execute(
        "select cell_index, round(umap_1, 3) as x, round(umap_2, 3) as y, cell_type from cells "
        "where dataset = ? and umap_1 is not null order by cell_index",
        [dataset],
    ).pl()
    values = connection.execute(
        # only cells drawn now (cells re-ingested after these feature tables may have another sample)
        "select m.feature, m.cell_index, m.max_activation from feature_cell_map m join cells c "
        "on c.dataset = m.dataset and c.cell_index = m.cell_index and c.umap_1 is not null "
        "where m.dataset = ? and m.layer = ? order by m.feature, m.cell_index",
        [dataset, layer],
    ).pl()
    return {"cells": _columns(drawn), **_packed(values, drawn["cell_index"].to_numpy())}


def _packed(values: pl.DataFrame, drawn: np.ndarray) -> dict[str, list[Any]]:
    """Per feature: its maximum on the map and its cells' activations as bytes in base64, each a level of
    that maximum (1–255; 0 = silent): one byte per drawn cell (dense), or (position: 2 bytes little-endian,
    level) per firing cell (sparse), whichever is shorter. 2,000 cells × 16k features fit in a page."""
    if drawn.size > 2**16:
        raise ValueError(
            f"{drawn.size} cells on the map: a page addresses at most 65,536 (MAP_CELLS is 2,000)"
        )
    features = values["feature"].to_numpy()
    bounds = np.r_[np.unique(features, return_index=True)[1], features.size]  # rows sorted by feature
    positions = np.searchsorted(drawn, values["cell_index"].to_numpy())
    activation = values["max_activation"].to_numpy()
    packed: dict[str, list[Any]] = {"feature": [], "max": [], "dense": [], "data": []}
    for start, stop in itertools.pairwise(bounds):
        where, level = positions[start:stop], activation[start:stop]
        top = float(level.max())
        levels = np.clip(np.rint(MAP_LEVELS * level / top), 1, MAP_LEVELS).astype(np.uint8)  # rows fire
        dense = 3 * where.size > drawn.size
        if dense:
            raw = np.zeros(drawn.size, dtype=np.uint8)
            raw[where] = levels
            data = raw.tobytes()
        else:
            data = np.rec.fromarrays([where.astype("<u2"), levels.astype(np.uint8)]).tobytes()
        packed["feature"].append(int(features[start]))
        packed["max"].append(float(f"{top:.4g}"))  # significant digits: a tiny maximum stays > 0
        packed["dense"].append(bool(dense))
        packed["data"].append(base64.b64encode(data).decode("ascii"))
    return packed


def similar_features(decoder: Any, k: int = SIMILAR) -> pl.DataFrame:
    """Each feature's `k` nearest other features of its SAE by decoder cosine, nearest first (columns
    feature, similar, cosine)."""
    from sae_genomics_core.sae.matching import nearest_directions

    found, cosines = nearest_directions(decoder, k, SIMILAR_CHUNK_ROWS)
    return pl.DataFrame(
        {
            "feature": np.repeat(np.arange(found.shape[0], dtype=np.int64), found.shape[1]),
            "similar": found.ravel().astype(np.int64),
            "cosine": cosines.ravel().astype(np.float64).round(3),
        }
    )


def features_checkpoint(warehouse: Path, dataset: str, layer: int) -> str | None:
    """The SAE checkpoint the layer's feature tables were derived from (None: no feature tables)."""
    with connect_read_only(Path(warehouse)) as connection:
        if "feature_stats" not in table_names(connection):
            return None
        return connection.execute(
            "select any_value(checkpoint_id) from feature_stats where dataset = ? and layer = ?",
            [dataset, layer],
        ).fetchone()[0]  # type: ignore[index]


def _require_feature_stats(
    connection: duckdb.DuckDBPyConnection, tables: set[str], dataset: str, layer: int
) -> None:
    if (
        "feature_stats" not in tables
        or not connection.execute(
            "select count(*) from feature_stats where dataset = ? and layer = ?", [dataset, layer]
        ).fetchone()[0]
    ):  # type: ignore[index]
        raise PagesUnavailable(
            f"no feature_stats for {dataset} layer {layer}: materialise the feature tables first"
        )


def _columns(frame: pl.DataFrame | None) -> dict[str, list[Any]]:
    if frame is None:
        return {}
    return {name: _json_safe(frame[name].to_list()) for name in frame.columns}


def _json_safe(values: list[Any]) -> list[Any]:
    """Floats to PAGE_DIGITS significant digits (the page shows three; the warehouse keeps them all), and
    JSON's missing inf/nan: odds ratios of complete overlaps are inf, kept readable."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            return None if v != v else ("inf" if v > 0 else "-inf")
        return float(f"{v:.{PAGE_DIGITS}g}") if isinstance(v, float) else v

    return [fix(v) for v in values]


def render(data: dict[str, Any], vega_bundle: str) -> str:
    # <, > and & as JSON escapes: no text in the data (`</script>`, `<!--<script`) can end or bend the block
    payload = (
        json.dumps(data, separators=(",", ":"), default=str)
        .replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
    )
    title = f"sae-genomics · {data['dataset']} · layer {data['layer']}"
    return (
        _TEMPLATE.replace("__TITLE__", html.escape(title))
        .replace("__TERMS_PER_DATABASE__", str(TERMS_PER_DATABASE))
        .replace("__MIN_LOG2_FOLD_CHANGE__", str(MIN_LOG2_FOLD_CHANGE))
        .replace("__VEGA__", vega_bundle.replace("</script", "<\\/script"))
        .replace("__DATA__", payload)  # last: data must never be scanned for placeholders
    )


def build_feature_pages(
    warehouse: Path, dataset: str, layer: int, out_dir: Path, similar: pl.DataFrame | None = None
) -> PagesResult:
    """Write `out_dir/index.html`, and the dataset's entry page beside the layers' folders (atomically: a
    failed build leaves the previous pages)."""
    import vl_convert as vlc

    data = collect(warehouse, dataset, layer, similar)
    target = out_dir / "index.html"
    _write_atomically(target, render(data, vlc.javascript_bundle()))
    layers = (entry["layer"] for entry in data["layers"])
    with_pages = [n for n in layers if (out_dir.parent / f"L{n}" / "index.html").exists()]
    _write_atomically(out_dir.parent / "index.html", dataset_entry(dataset, with_pages))
    return PagesResult(
        path=target, n_features=len(data["stats"].get("feature", [])), n_bytes=target.stat().st_size
    )


def _write_atomically(target: Path, text: str) -> None:
    """Through a file of its own (a dataset's layers build at once and share the entry page)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".partial")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(partial, 0o644)  # a served page must be readable (mkstemp makes it private)
    os.replace(partial, target)


def dataset_entry(dataset: str, layers_with_pages: list[int]) -> str:
    """The dataset's explorer address (`<dataset>/index.html`): it opens the first layer with pages,
    whose layer switcher reaches the others."""
    first = layers_with_pages[0] if layers_with_pages else None
    title = html.escape(f"sae-genomics · {dataset}")
    links = "".join(f'<li><a href="L{n}/index.html">layer {n}</a></li>' for n in layers_with_pages)
    refresh = f'<meta http-equiv="refresh" content="0; url=L{first}/index.html">' if first is not None else ""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}<title>{title}</title></head>'
        f"<body><h1>{title}</h1><ul>{links}</ul></body></html>\n"
    )


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 10px 18px; display: flex; gap: 18px; align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 17px; margin: 0; font-weight: 600; }
  header a { color: #9fd1ff; }
  #search { font-size: 15px; padding: 6px 10px; width: 340px; border-radius: 4px; border: 0; }
  main { display: grid; grid-template-columns: 320px 1fr; min-height: calc(100vh - 50px); }
  nav { border-right: 1px solid #dde; overflow-y: auto; max-height: calc(100vh - 50px); }
  nav a { display: block; padding: 5px 12px; text-decoration: none; color: inherit; border-bottom: 1px solid #f0f0f4; }
  nav a:hover, nav a.current { background: #eef4ff; }
  nav small, .muted { color: #667; } nav small.why { color: #8a5a00; }
  section { padding: 14px 22px; overflow-x: auto; }
  h2 { font-size: 18px; margin: 4px 0 10px; } h3 { font-size: 15px; margin: 18px 0 6px; }
  table { border-collapse: collapse; font-size: 13px; } td, th { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: left; }
  th { background: #f6f7fb; } .sig { font-weight: 600; color: #a3261b; }
  .charts { display: flex; gap: 20px; flex-wrap: wrap; }
  .pill.replicated { background: #e3f6e8; }
  a.out { font-size: 12px; margin-right: 6px; white-space: nowrap; } a.csv { font-size: 12px; font-weight: normal; margin-left: 8px; }
  .pill { display: inline-block; background: #eef4ff; border-radius: 10px; padding: 0 8px; margin: 1px; font-size: 12px; }
</style>
<script>__VEGA__</script>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <input id="search" type="search" placeholder="Search a gene, term or cell type…" autocomplete="off">
  <label class="muted">layer <select id="layer"></select></label>
  <label class="muted">list by <select id="order"></select></label>
  <span id="summary" class="muted"></span>
  <a href="#">overview</a>
</header>
<main>
  <nav id="list"></nav>
  <section id="page"></section>
</main>
<script id="data" type="application/json">__DATA__</script>
<script>
// one function scope: the Vega bundle above declares top-level names of its own
(() => {
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const rows = (cols) => { const keys = Object.keys(cols); const n = keys.length ? cols[keys[0]].length : 0;
  return Array.from({length: n}, (_, i) => Object.fromEntries(keys.map(k => [k, cols[k][i]]))); };
const byFeature = (list) => { const m = new Map(); for (const r of list) { if (!m.has(r.feature)) m.set(r.feature, []); m.get(r.feature).push(r); } return m; };
const stats = rows(D.stats), genes = byFeature(rows(D.genes)), cells = byFeature(rows(D.cells)),
      types = byFeature(rows(D.cell_types)), hist = byFeature(rows(D.histograms)), terms = byFeature(rows(D.enrichment)),
      baselines = rows(D.baselines), effects = byFeature(rows(D.effects)), effectTypes = byFeature(rows(D.effect_types)),
      stability = new Map(rows(D.stability).map(r => [r.feature, r])), similar = byFeature(rows(D.similar)),
      matches = byFeature(rows(D.matches)), cellGenes = byFeature(rows(D.cell_genes)),
      mapCells = rows((D.map || {}).cells || {}), mapAt = new Map(((D.map || {}).feature || []).map((f, i) => [f, i]));
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const num = (x, d = 3) => x === null || x === undefined ? "" : (typeof x === "string" ? x : (Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(2) : x.toFixed(d)));
const sigTerms = (f) => (terms.get(f) || []).filter(t => t.significant);
// a cell type is a finding only with q < 0.05, a fold change surely above 0 and large enough (MIN_LOG2_FOLD_CHANGE)
const passes = (r) => r.q_value < 0.05 && r.log2_fold_change_lower > 0 && r.log2_fold_change >= __MIN_LOG2_FOLD_CHANGE__;
const bestType = (f) => (types.get(f) || []).filter(passes).sort((a, b) => (b.replicated - a.replicated) || (b.log2_fold_change_lower - a.log2_fold_change_lower))[0];
const NO_CELL_TYPES = "<p class=muted>This dataset has no cell types, so no feature is tested against them. Register it again with <code>--cell-type-key COLUMN</code> (the obs column that holds them; <code>sae-genomics validate FILE</code> lists the columns), then materialise the features.</p>";
const NO_MAP = "<p class=muted>No map for this layer: the dataset has under 50 cells, or its cells or this layer's feature tables were made before the map existed (materialise <code>cells</code> and the feature tables again).</p>";
const table = (head, body) => `<table><tr>${head.map(h => `<th>${h}</th>`).join("")}</tr>${body.join("")}</table>`;
const TITLE = document.title;

// what a feature's label may claim: its best replicated term (smallest q) and best replicated cell type
function claims(f) {
  const t = (terms.get(f) || []).filter(r => r.replicated).sort((a, b) => a.q_value - b.q_value)[0];
  const c = bestType(f);  // a replicated one when there is one
  return [t && (t.term_name || t.term_id), c?.replicated && c.cell_type].filter(Boolean);
}
const topGenes = (f, n) => (genes.get(f) || []).slice(0, n).map(r => r.gene).join(", ");
const autoLabel = (f) => claims(f).join(" · ") || (genes.has(f) ? "top genes: " + topGenes(f, 3) : "no genes");

function label(s) {
  const named = claims(s.feature).length;
  return `<b>#${s.feature}</b> ${esc(autoLabel(s.feature))}<br><small>${num(s.frequency, 4)} of tokens${named ? " · " + esc(topGenes(s.feature, 4)) : ""}</small>`;
}

function listFeatures(items, note) {
  document.getElementById("list").innerHTML = (note ? `<div class="muted" style="padding:6px 12px">${note}</div>` : "") +
    items.slice(0, 400).map(s => `<a href="#feature=${s.feature}" data-feature="${s.feature}">${label(s)}</a>`).join("");
}

// the list's orderings: each a feature's sort keys, largest first
const ORDERS = {
  default: ["significant terms, then frequency", s => [sigTerms(s.feature).length, s.frequency]],
  specificity: ["top gene's specificity", s => [(genes.get(s.feature) || [{}])[0].specificity ?? -Infinity]],
  frequency: ["frequency", s => [s.frequency]],
  enrichment: ["replicated, then significant terms", s => [(terms.get(s.feature) || []).filter(r => r.replicated).length, sigTerms(s.feature).length]],
  cell_type: ["cell-type effect (log2 FC lower bound)", s => [bestType(s.feature)?.log2_fold_change_lower ?? -Infinity]],
};
const order = document.getElementById("order");
order.innerHTML = Object.entries(ORDERS).map(([k, [text]]) => `<option value="${k}">${esc(text)}</option>`).join("");
const byKeys = (a, b) => { for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return b[i] - a[i]; return 0; };
const ordered = (list) => { const key = ORDERS[order.value][1]; return list.map(s => [key(s), s]).sort((a, b) => byKeys(a[0], b[0])).map(x => x[1]); };

function search(query) {
  const q = query.trim().toLowerCase();
  if (!q) { listFeatures(defaultOrder(), ""); return; }
  // whole gene symbols (or Ensembl ids) first; then a feature's weight: a significant term or cell type
  // counts most, then a top gene (by rank), then other terms
  const hits = new Map();
  const add = (f, why, weight, exact = false) => { const h = hits.get(f) || {why: new Set(), weight: 0, exact: false}; h.why.add(why); h.weight += weight; h.exact ||= exact; hits.set(f, h); };
  for (const [f, list] of genes) for (const r of list) {
    const exact = String(r.gene).toLowerCase() === q || String(r.ensembl_id).toLowerCase() === q;
    if (exact || String(r.gene).toLowerCase().includes(q)) add(f, "gene " + r.gene + " (rank " + r.rank + ")", 2 + 1 / r.rank, exact);
  }
  for (const [f, list] of terms) for (const r of list) if (String(r.term_name ?? "").toLowerCase().includes(q) || String(r.term_id).toLowerCase() === q) add(f, `${r.significant ? "significant term" : "term (not significant)"} ${r.term_name ?? r.term_id}, q ${num(r.q_value, 2)}, odds ratio ${num(r.odds_ratio, 1)}`, r.significant ? 4 : 0.1);
  for (const [f, list] of types) for (const r of list) if (passes(r) && String(r.cell_type).toLowerCase().includes(q)) add(f, `cell type ${r.cell_type}, log2FC ${num(r.log2_fold_change, 2)}, q ${num(r.q_value, 2)}`, 3);
  if (/^\d+$/.test(q) && stats.some(s => s.feature === Number(q))) add(Number(q), "feature number", 10);
  const found = ordered(stats.filter(s => hits.has(s.feature))).map(s => [hits.get(s.feature), s])
    .sort(([a], [b]) => (b.exact - a.exact) || (b.weight - a.weight)).map(x => x[1]);
  listFeatures(found, `${found.length} feature${found.length === 1 ? "" : "s"} match “${esc(query)}”`);
  for (const a of document.querySelectorAll("#list a")) {
    const why = [...hits.get(Number(a.dataset.feature)).why];
    a.insertAdjacentHTML("beforeend", `<br><small class="why">${esc(why.slice(0, 2).join("; "))}${why.length > 2 ? " …" : ""}</small>`);
  }
}

function defaultOrder() {
  return ordered(stats.filter(s => s.fire_count > 0));
}

function chart(el, spec) { vegaEmbed(el, spec, {renderer: "svg", actions: false}).catch(e => { document.querySelector(el).textContent = "chart failed: " + e; }); }

function baselineTable() {
  if (!baselines.length) return "<p class=muted>No enrichment_baselines for this layer yet.</p>";
  const dbs = [...new Set(baselines.map(b => b.database))];
  const cell = (db, m) => { const b = baselines.find(x => x.database === db && x.method === m); return b ? `${num(b.fraction_significant, 3)} <small>(${b.n_units_significant}/${b.n_units_tested})</small>` : ""; };
  return table(["database", "SAE features", "PCA directions", "random directions"], dbs.map(db => `<tr><td>${esc(db)}</td><td>${cell(db, "sae")}</td><td>${cell(db, "pca")}</td><td>${cell(db, "random")}</td></tr>`));
}

function overview() {
  const sae = D.sae || {}; const alive = stats.filter(s => s.fire_count > 0).length;
  document.getElementById("page").innerHTML = `<h2>${esc(D.dataset)} · layer ${D.layer}</h2>
    <p>${stats.length} features (${alive} alive)${sae.d_sae ? ` · TopK SAE d_in ${sae.d_in} → ${sae.d_sae}, k ${sae.k}, hook ${esc(sae.hook)}, held-out explained variance ${num(sae.explained_variance)}` : ""}${sae.random_weights ? " · <b>model with random weights</b>: features are not expected to be biological" : ""}.</p>
    ${seedSummary()}
    <h3>Fraction of units with at least one significant term (BH q ≤ 0.05)</h3>${baselineTable()}
    <h3>Feature density</h3><div id="density"></div>
    <p class=muted>Search above, or pick a feature on the left (ordered as chosen above it).</p>`;
  document.title = TITLE;
  chart("#density", densitySpec(null));
}

function densitySpec(mark) {
  const values = stats.filter(s => s.frequency > 0).map(s => ({log10_frequency: Math.log10(s.frequency)}));
  const layers = [{mark: "bar", encoding: {x: {field: "log10_frequency", bin: {maxbins: 40}, title: "log10 fraction of tokens"}, y: {aggregate: "count", title: "features"}}}];
  if (mark !== null) layers.push({mark: {type: "rule", color: "#d62728", strokeWidth: 2}, data: {values: [{x: mark}]}, encoding: {x: {field: "x", type: "quantitative"}}});
  return {width: 380, height: 150, data: {values}, layer: layers};
}

function featurePage(f) {
  const s = stats.find(x => x.feature === f);
  if (!s) { document.getElementById("page").innerHTML = `<p>No feature ${f} in this layer.</p>`; return; }
  for (const a of document.querySelectorAll("#list a")) a.classList.toggle("current", Number(a.dataset.feature) === f);
  const g = genes.get(f) || [], c = cells.get(f) || [], t = types.get(f) || [], e = terms.get(f) || [], h = hist.get(f) || [];
  const sig = e.filter(r => r.significant), replicatedTerms = e.filter(r => r.replicated);
  document.title = `#${f} ${autoLabel(f)} · ${TITLE}`;
  document.getElementById("page").innerHTML = `<h2 id="feature-title">Feature ${f} · ${esc(autoLabel(f))}</h2>
    <p>fires on ${num(s.frequency, 5)} of tokens (${s.fire_count} tokens, ${s.n_cells_active} cells) · mean activation ${num(s.mean_activation)} · max ${num(s.max_activation)}
    · ${sig.length ? `<span class=sig>${sig.length} significant term${sig.length === 1 ? "" : "s"}</span>, ${replicatedTerms.length} replicated on held-out genes` : "no significant term"}
    · ${stableText(f)}</p>
    <div class="charts"><div><h3>Top genes</h3><div id="genes-chart"></div></div>
      <div><h3>Activation histogram (cells)</h3><div id="hist-chart"></div><h3>Density: this feature in its layer</h3><div id="density"></div></div>
      <div><h3>The dataset's cells (UMAP of expression), by this feature</h3>${mapCells.length ? `<div id="map-chart"></div>` : NO_MAP}</div></div>
    <h3>Top genes${csvLink(f, "genes")}</h3>${table(["rank", "gene", "Ensembl", "score", "specificity", "tokens", "held-out lift", "held out", "look up"], g.map(r => `<tr><td>${r.rank}</td><td>${esc(r.gene)}</td><td>${esc(r.ensembl_id)}</td><td>${num(r.score)}</td><td>${num(r.specificity)}</td><td>${r.n_tokens}</td><td>${num(r.held_out_specificity, 2)}</td><td>${heldOut(r)}</td><td>${geneLinks(r)}</td></tr>`))}
    ${similarSection(f)}${matchesSection(f)}
    <h3>Enrichment (BH q per database; its best __TERMS_PER_DATABASE__ rows each, and every significant one)${csvLink(f, "enrichment")}</h3>${e.length ? table(["database", "term", "overlap", "set", "term size", "odds ratio", "log10 p", "q", "held-out odds ratio", "held out", "genes"], e.map(r => `<tr class="${r.significant && r.odds_ratio > 1 ? "sig" : ""}"><td>${esc(r.database)}</td><td>${esc(r.term_name || r.term_id)} <small>${termLink(r.term_id)}</small>${r.most_specific ? ' <span class=pill title="no significant descendant term">most specific</span>' : ""}</td><td>${r.overlap}</td><td>${r.feature_set_size}</td><td>${r.term_size}</td><td>${num(r.odds_ratio, 1)}</td><td>${num(r.log10_p_value, 2)}</td><td>${num(r.q_value)}</td><td>${num(r.held_out_odds_ratio, 1)}</td><td>${heldOut(r)}</td><td>${(r.overlap_genes || []).map(x => `<span class=pill>${esc(x)}</span>`).join("")}</td></tr>`)) : "<p class=muted>Not tested (no enrichment rows for this feature).</p>"}
    <h3>Compared with the baselines of this layer</h3>${baselineTable()}
    <h3>Cell types (a cell's mean activation per token; type vs rest by ${t.length && t[0].test_unit === "sample" ? "paired t over samples (pseudobulk)" : "Welch's t with cells as units"}; BH q; highlighted: q &lt; 0.05, the fold change's 95% lower bound &gt; 0 and log2 FC ≥ __MIN_LOG2_FOLD_CHANGE__)${csvLink(f, "cell_types")}</h3>${types.size ? table(["cell type", "mean activation", "fraction of cells active", "log2 FC", "log2 FC lower bound", "q", "units", "held-out log2 FC", "held out"], t.map(r => `<tr class="${passes(r) ? "sig" : ""}"><td>${esc(r.cell_type)}</td><td>${num(r.mean_activation)}</td><td>${num(r.frac_active)}</td><td>${num(r.log2_fold_change, 2)}</td><td>${num(r.log2_fold_change_lower, 2)}</td><td>${num(r.q_value)}</td><td>${r.n_units} ${esc(r.test_unit)}s</td><td>${num(r.held_out_log2_fold_change, 2)}</td><td>${heldOut(r)}</td></tr>`)) : NO_CELL_TYPES}
    <h3>Top cells, with the genes it fires on in each (shaded by activation; the cell's expression bin of the gene on hover)${csvLink(f, "cells")}${csvLink(f, "cell_genes", "genes CSV")}</h3>${table(["rank", "cell", "cell type", "max activation", "genes it fires on, strongest first"], c.map(r => `<tr><td>${r.rank}</td><td>${esc(r.cell_id)}</td><td>${esc(r.cell_type)}</td><td>${num(r.max_activation)}</td><td>${firedGenes(f, r)}</td></tr>`))}
    ${whatItDoes(f)}`;
  const fx = (effects.get(f) || []).filter(r => r.intervention === "steer" && r.cells === "silent");
  if (fx.length) chart("#effects-chart", {width: 300, height: Math.max(80, 15 * fx.length), data: {values: fx}, mark: "bar",
    encoding: {y: {field: "gene", type: "nominal", sort: {field: "effect", order: "descending"}, title: null},
               x: {field: "effect", type: "quantitative", title: `change of predicted expression (steered ×${fx[0].strength})`},
               color: {field: "consistency", type: "quantitative", scale: {scheme: "viridis", domain: [0.5, 1]}, title: "cells agreeing"},
               tooltip: [{field: "gene"}, {field: "effect"}, {field: "effect_sd"}, {field: "consistency"}, {field: "n_cells"}]}});
  chart("#genes-chart", {width: 300, height: Math.max(100, 15 * g.length), data: {values: g}, mark: "bar",
    encoding: {y: {field: "gene", type: "nominal", sort: {field: "rank"}, title: null}, x: {field: "score", type: "quantitative", title: "Σ activation × expression"},
               color: {field: "specificity", type: "quantitative", scale: {scheme: "viridis"}}, tooltip: [{field: "gene"}, {field: "score"}, {field: "specificity"}]}});
  chart("#hist-chart", {width: 300, height: 130, data: {values: h}, mark: {type: "rect", stroke: "white"},
    encoding: {x: {field: "bin_start", type: "quantitative", title: "cell's max activation"}, x2: {field: "bin_end"},
               y: {field: "n_cells", type: "quantitative", title: "cells"}, y2: {datum: 0}}});
  chart("#density", densitySpec(s.frequency > 0 ? Math.log10(s.frequency) : null));
  if (mapCells.length) chart("#map-chart", mapSpec(f));
}

// a feature's activation in each cell on the map (its per-cell maximum), unpacked from the page's bytes
function mapValues(f) {
  const values = new Float64Array(mapCells.length), i = mapAt.get(f);
  if (i === undefined) return values;  // fires in none of the drawn cells
  const bytes = Uint8Array.from(atob(D.map.data[i]), ch => ch.charCodeAt(0)), scale = D.map.max[i] / 255;
  if (D.map.dense[i]) bytes.forEach((b, j) => { values[j] = b * scale; });
  else for (let j = 0; j < bytes.length; j += 3) values[bytes[j] | (bytes[j + 1] << 8)] = bytes[j + 2] * scale;
  return values;
}

function mapSpec(f) {
  const a = mapValues(f);
  // silent cells first, so the firing ones are drawn on top of them
  const points = mapCells.map((c, j) => ({x: c.x, y: c.y, activation: a[j], cell_type: c.cell_type})).sort((p, q) => p.activation - q.activation);
  return {width: 300, height: 300, data: {values: points}, mark: {type: "circle", size: 14, opacity: 0.9},
    encoding: {x: {field: "x", type: "quantitative", axis: null}, y: {field: "y", type: "quantitative", axis: null},
               color: {condition: {test: "datum.activation === 0", value: "#d9dbe3"}, field: "activation", type: "quantitative", scale: {scheme: "oranges", domainMin: 0}, title: "max activation"},
               tooltip: [{field: "cell_type", title: "cell type"}, {field: "activation", format: ".3f"}]}};
}

// a top cell's genes where the feature fires, shaded by activation relative to the cell's maximum
function firedGenes(f, cell) {
  const list = (cellGenes.get(f) || []).filter(r => r.cell_rank === cell.rank);  // strongest first
  if (!(D.cell_genes.feature || []).length) return "<span class=muted>not recorded (feature tables older than feature_cell_genes)</span>";
  if (!list.length) return "<span class=muted>not recorded (below the top cells_with_genes)</span>";
  return list.map(r => `<span class="pill fired" style="background: rgba(230, 120, 20, ${(0.12 + 0.78 * r.activation / cell.max_activation).toFixed(2)})" title="activation ${num(r.activation)}, expression bin ${r.expression_bin}">${esc(r.gene)}</span>`).join("");
}

// a claim chosen on one half of the data and tested on the other (features.holdout)
function heldOut(r) {
  if (r.replicated) return '<span class="pill replicated" title="selected on one half, significant on the other">replicated</span>';
  return r.selected ? '<span class=muted title="selected on one half, not significant on the other">not replicated</span>' : "";
}

// links out open in a new tab; symbol links only where the gene has a symbol (else its Ensembl id shows)
const out = (url, text) => `<a class=out href="${esc(url)}" target="_blank" rel="noopener">${esc(text)}</a>`;
function geneLinks(r) {
  const id = r.ensembl_id, symbol = r.gene !== id ? r.gene : null, q = encodeURIComponent;
  return [symbol && out(`https://www.genenames.org/tools/search/#!/?query=${q(symbol)}`, "HGNC"),
    id && out(`https://www.ensembl.org/Homo_sapiens/Gene/Summary?g=${q(id)}`, "Ensembl"),
    id && out(`https://platform.opentargets.org/target/${q(id)}`, "Open Targets"),
    symbol && out(`https://string-db.org/cgi/network?identifiers=${q(symbol)}&species=9606`, "STRING"),
    symbol && out(`https://monarchinitiative.org/search?q=${q(symbol)}`, "Monarch")].filter(Boolean).join("");
}

// HPO terms to HPO, MONDO / OMIM / Orphanet ids (Open Targets writes MONDO_…) to Monarch; others as text
function termLink(id) {
  const m = String(id ?? "").match(/^(HP|MONDO|OMIM|ORPHA)[:_](\w+)$/);
  if (!m) return esc(id);
  const curie = `${m[1]}:${m[2]}`;
  return out(m[1] === "HP" ? `https://hpo.jax.org/browse/term/${curie}` : `https://monarchinitiative.org/${curie}`, id);
}

// a feature on another page: another layer of this dataset, or this layer in another dataset
function featureHref(dataset, layer, f) {
  if (dataset !== D.dataset) return `../../${encodeURIComponent(dataset)}/L${layer}/index.html#feature=${f}`;
  return layer === D.layer ? `#feature=${f}` : `../L${layer}/index.html#feature=${f}`;
}
const featureLink = (dataset, layer, f) => f === null || f < 0 ? "none" : `<a href="${esc(featureHref(dataset, layer, f))}">#${f}</a>`;

function similarSection(f) {
  if (!D.similar.feature) return "";  // no checkpoint of these tables when the pages were built
  return `<h3>Similar features (nearest decoder directions in this SAE)${csvLink(f, "similar")}</h3>${table(["feature", "decoder cosine", "label"],
    (similar.get(f) || []).map(r => `<tr><td>${featureLink(D.dataset, D.layer, r.similar)}</td><td>${num(r.cosine, 3)}</td><td>${esc(autoLabel(r.similar))}</td></tr>`))}`;
}

function matchesSection(f) {
  if (!D.matches.feature) return "";  // no feature_matches table
  const m = matches.get(f) || [], where = (r) => r.other_dataset === D.dataset ? `layer ${r.other_layer}` : `${esc(r.other_dataset)} · layer ${r.other_layer}`;
  return `<h3>In other layers and datasets (best decoder match above chance)${csvLink(f, "matches")}</h3>${m.length ? table(["where", "best match", "cosine", "chance", "mutual", "one-to-one partner", "its cosine"],
    m.map(r => `<tr><td>${where(r)}</td><td>${featureLink(r.other_dataset, r.other_layer, r.best_match)}</td><td>${num(r.best_cosine, 3)}</td><td>${num(r.chance_cosine, 3)}</td><td>${r.mutual ? "yes" : "no"}</td><td>${featureLink(r.other_dataset, r.other_layer, r.matched_feature)}</td><td>${num(r.matched_cosine, 3)}</td></tr>`))
    : "<p class=muted>No match above chance in the other layers and datasets matched.</p>"}`;
}

// a table of the feature as CSV, built on click from the same rows the page shows
const CSV_TABLES = {genes, cell_types: types, enrichment: terms, cells, cell_genes: cellGenes, similar, matches};
const csvLink = (f, name, text = "CSV") => `<a class=csv href="#" data-csv="${name}" data-feature="${f}">${text}</a>`;
const csvCell = (v) => { const s = v === null || v === undefined ? "" : Array.isArray(v) ? v.join(";") : String(v); return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
const toCsv = (list) => { const keys = Object.keys(list[0] || {}); return [keys, ...list.map(r => keys.map(k => r[k]))].map(r => r.map(csvCell).join(",")).join("\r\n") + "\r\n"; };
function download(ev) {
  const a = ev.target.closest("a[data-csv]");
  if (!a) return;
  ev.preventDefault();
  const link = document.createElement("a"), f = Number(a.dataset.feature);
  link.href = URL.createObjectURL(new Blob([toCsv(CSV_TABLES[a.dataset.csv].get(f) || [])], {type: "text/csv"}));
  link.download = `${D.dataset}-L${D.layer}-feature-${f}-${a.dataset.csv}.csv`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 40000);  // after the download has read it
}

function stableText(f) {
  const st = stability.get(f), n = (D.seeds || {}).n_seeds;
  if (!st) return "seed stability not measured";
  const how = `its one-to-one partner in the other seed${n > 2 ? "s" : ""}: cosine ${num(st.min_seed_cosine, 2)}`;
  return st.stable ? `<b>stable</b> across ${n} training seeds (${how})` : `not stable across ${n} training seeds (${how}; stable needs ≥ 0.7)`;
}

function seedSummary() {
  const s = D.seeds || {};
  if (s.n_seeds === undefined) return "";
  return `<p>Across ${s.n_seeds} training seeds: ${num(s.fraction_stable, 3)} of features stable; best-match cosine above 0.9 for ${num(s.best_above_0_9, 3)} (random directions: ${num(s.null_best_above_0_9, 3)}); explained variance ${num(s.explained_variance_mean)} ± ${num(s.explained_variance_sd)}.</p>`;
}

function whatItDoes(f) {
  const sae = D.sae || {}, fx = effects.get(f) || [], shifts = effectTypes.get(f) || [];
  const recovered = sae.loss_recovered_expr_zero === undefined || sae.loss_recovered_expr_zero === null ? "not measured"
    : `expression decoder ${num(sae.loss_recovered_expr_zero)}, MVC decoder ${num(sae.loss_recovered_mvc_zero)} (1 = nothing lost, 0 = as bad as deleting the layer)`;
  const head = `<h3>What it does (interventions through the model)</h3><p>Loss recovered by this layer's SAE: ${recovered}.</p>`;
  if (!fx.length) return head + "<p class=muted>Not evaluated: the feature_effects asset has no rows for this feature (without a GPU it evaluates a subset, the features whose active and silent held-out cells are most balanced; run it on a GPU for all).</p>";
  const group = (intervention, cells) => fx.filter(r => r.intervention === intervention && r.cells === cells);
  const rowsOf = (list) => list.map(r => `<tr><td>${esc(r.direction)}</td><td>${esc(r.gene)}</td><td>${num(r.effect)}</td><td>${num(r.effect_sd)}</td><td>${num(r.consistency, 2)}</td><td>${r.n_cells}</td></tr>`);
  const effectTable = (list) => list.length ? table(["direction", "gene", "mean change", "s.d.", "cells agreeing", "cells"], rowsOf(list)) : "<p class=muted>none</p>";
  const steered = group("steer", "silent"), strength = steered.length ? steered[0].strength : null;
  return head + `<p class=muted>Predicted expression is the MVC decoder's, for every gene of the dataset; each edit keeps the SAE's error term.</p>
    <div class="charts"><div><h4>Switched on where it is silent (steered ×${num(strength, 1)} its mean activation)</h4><div id="effects-chart"></div></div>
    <div><h4>Cell embedding moves toward (cosine change)</h4>${shifts.length ? table(["cell type", "cosine change"], shifts.slice(0, 6).map(r => `<tr><td>${esc(r.cell_type)}</td><td>${num(r.cosine_shift, 4)}</td></tr>`)) : "<p class=muted>no cell types</p>"}</div></div>
    <h4>Ablated where it fires (set to 0)</h4>${effectTable(group("ablate", "active"))}
    <h4>Steered where it fires (×${num(strength, 1)})</h4>${effectTable(group("steer", "active"))}`;
}

function route() {
  const m = location.hash.match(/feature=(\d+)/);
  if (m) featurePage(Number(m[1])); else overview();
}
// the dataset's other layers: the page of the shown feature's best match there, else that layer's overview
const layerSelect = document.getElementById("layer");
// a layer without feature tables when this page was built: over http it may have pages by now (the
// switcher asks), from a file it cannot be asked, so it is not offered
const askable = location.protocol.startsWith("http");
layerSelect.innerHTML = D.layers.map(l => `<option value="${l.layer}"${l.layer === D.layer ? " selected" : ""}${l.built || askable ? "" : " disabled"}>${l.layer}${l.built ? "" : " (no feature tables when built)"}</option>`).join("");
layerSelect.addEventListener("change", async () => {
  const target = Number(layerSelect.value), shown = location.hash.match(/feature=(\d+)/);
  const match = shown && (matches.get(Number(shown[1])) || []).find(r => r.other_dataset === D.dataset && r.other_layer === target);
  const page = `../L${target}/index.html`;
  // over http, ask first: a layer with feature tables may not have its pages yet (file:// cannot ask)
  const missing = askable && !(await fetch(page, {method: "HEAD"}).then(r => r.ok, () => true));
  if (missing) { alert(`Layer ${target} has no feature pages yet: materialise feature_pages for ${D.dataset} layer ${target}.`); layerSelect.value = String(D.layer); return; }
  location.href = page + (match && match.best_match >= 0 ? `#feature=${match.best_match}` : "");
});
document.getElementById("search").addEventListener("input", (ev) => search(ev.target.value));
order.addEventListener("change", () => search(document.getElementById("search").value));
document.getElementById("page").addEventListener("click", download);
window.addEventListener("hashchange", route);
document.getElementById("summary").textContent = `${stats.length} features · ${rows(D.enrichment).filter(r => r.significant).length} significant feature–term pairs shown`;
listFeatures(defaultOrder(), "");
route();
})();
</script>
</body>
</html>
"""
