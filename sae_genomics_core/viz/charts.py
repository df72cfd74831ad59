"""Altair charts, and their embedding as images in Markdown (how they show in Dagster's metadata)."""

from __future__ import annotations

import base64
from typing import Any

import altair as alt
import polars as pl

TRAINING_METRICS = ("mse", "explained_variance", "l0", "dead_fraction")


def training_curves(log: list[dict[str, Any]], title: str) -> alt.Chart:
    """MSE, explained variance, L0 and dead fraction against tokens seen, one small panel each."""
    frame = (
        pl.DataFrame(log)
        .select("tokens_seen", *TRAINING_METRICS)
        .unpivot(index="tokens_seen", variable_name="metric")
        # the log's dead fraction counts latents silent over the last window only; the full-pass value
        # after training is in sae_checkpoints
        .with_columns(pl.col("metric").replace({"dead_fraction": "dead fraction (windowed)"}))
    )
    return (
        alt.Chart(frame.to_pandas(), title=title)
        .mark_line(point=len(log) < 40)
        .encode(x=alt.X("tokens_seen:Q", title="tokens seen"), y=alt.Y("value:Q", title=None))
        .properties(width=220, height=140)
        .facet(facet=alt.Facet("metric:N", title=None), columns=2)
        .resolve_scale(y="independent")
    )


def chart_markdown(chart: alt.Chart, alt_text: str) -> str:
    """The chart as an inline PNG in Markdown when a renderer is installed (vl-convert), else its spec."""
    try:
        import vl_convert as vlc

        png = vlc.vegalite_to_png(chart.to_json(), scale=1.5)
        return f"![{alt_text}](data:image/png;base64,{base64.b64encode(png).decode()})"
    except ImportError:
        return f"```json\n{chart.to_json()}\n```"


def save_chart(chart: alt.Chart, path_without_suffix: Any) -> list[str]:
    """Write the chart as HTML (always) and PNG (when vl-convert is installed); return the paths."""
    html = f"{path_without_suffix}.html"
    chart.save(html)
    written = [html]
    try:
        import vl_convert as vlc

        png = f"{path_without_suffix}.png"
        with open(png, "wb") as handle:
            handle.write(vlc.vegalite_to_png(chart.to_json(), scale=1.5))
        written.append(png)
    except ImportError:
        pass
    return written


def feature_density(stats: pl.DataFrame, title: str) -> alt.Chart:
    """Features by log10 firing frequency (fraction of tokens); dead features are counted in the title."""
    alive = stats.filter(pl.col("frequency") > 0).select(pl.col("frequency").log10().alias("log10_frequency"))
    dead = stats.height - alive.height
    return (
        alt.Chart(alive.to_pandas(), title=f"{title} — {dead} dead of {stats.height}")
        .mark_bar()
        .encode(
            x=alt.X(
                "log10_frequency:Q",
                bin=alt.Bin(maxbins=40),
                title="log10 fraction of tokens the feature fires on",
            ),
            y=alt.Y("count():Q", title="features"),
        )
        .properties(width=420, height=180)
    )


def l0_histogram(l0_counts: Any, title: str) -> alt.Chart:
    """Tokens by the number of latents firing on them (L0)."""
    frame = pl.DataFrame({"l0": range(len(l0_counts)), "tokens": [int(c) for c in l0_counts]}).filter(
        pl.col("tokens") > 0
    )
    return (
        alt.Chart(frame.to_pandas(), title=title)
        .mark_bar()
        .encode(x=alt.X("l0:O", title="latents firing on a token (L0)"), y=alt.Y("tokens:Q", title="tokens"))
        .properties(width=420, height=180)
    )


def top_genes_chart(genes: pl.DataFrame, title: str, top: int = 20) -> alt.Chart:
    """A feature's top genes: score (Σ activation × expression) as bars, specificity in the tooltip."""
    frame = genes.sort("rank").head(top).with_columns(pl.coalesce("symbol", "ensembl_id").alias("gene"))
    return (
        alt.Chart(frame.select("gene", "score", "specificity", "n_tokens", "rank").to_pandas(), title=title)
        .mark_bar()
        .encode(
            y=alt.Y("gene:N", sort=alt.EncodingSortField("rank"), title=None),
            x=alt.X("score:Q", title="Σ activation × expression"),
            color=alt.Color("specificity:Q", title="specificity", scale=alt.Scale(scheme="viridis")),
            tooltip=["gene", "score", "specificity", "n_tokens", "rank"],
        )
        .properties(width=360, height=max(120, 16 * frame.height))
    )


def cell_type_heatmap(cell_types: pl.DataFrame, title: str, n_features: int = 40) -> alt.Chart:
    """Cell type × feature log2 fold change for the features with the most significant cell-type preference."""
    best = (
        cell_types.group_by("feature")
        .agg(pl.col("q_value").min().alias("best_q"))
        .sort("best_q", "feature")
        .head(n_features)["feature"]
    )
    frame = cell_types.filter(pl.col("feature").is_in(best.implode())).select(
        pl.col("feature").cast(pl.String), "cell_type", "log2_fold_change", "q_value", "frac_active"
    )
    return (
        alt.Chart(frame.to_pandas(), title=title)
        .mark_rect()
        .encode(
            x=alt.X("feature:N", title="feature", sort=best.cast(pl.String).to_list()),
            y=alt.Y("cell_type:N", title=None),
            color=alt.Color(
                "log2_fold_change:Q",
                title="log2 FC",
                scale=alt.Scale(scheme="redblue", domainMid=0, reverse=True),
            ),
            tooltip=["feature", "cell_type", "log2_fold_change", "q_value", "frac_active"],
        )
        .properties(width=max(200, 14 * len(best)), height=max(120, 18 * frame["cell_type"].n_unique()))
    )


def enrichment_dot_plot(enrichment: pl.DataFrame, where: str, n_terms: int = 25) -> alt.Chart:
    """The pairs with the smallest p-values: dot size = overlap, colour = −log10 q, one row per term. The
    title says whether any is significant; the colour scale starts at q = 1 and reaches at least
    q = 0.01, so pairs that are all q = 1 look pale rather than filling the scale."""
    n_significant = int(enrichment["significant"].sum())
    title = (
        f"{min(n_significant, n_terms)} most significant feature × term pairs (of {n_significant}), {where}"
        if n_significant
        else f"no significant feature × term pair: the {n_terms} smallest p-values (all q > FDR), {where}"
    )
    frame = (
        enrichment.sort("log10_p_value")
        .head(n_terms)
        .select(
            "feature",
            (pl.col("database") + ": " + pl.col("term_name").fill_null(pl.col("term_id"))).alias("term"),
            "overlap",
            "q_value",
            "log10_p_value",
            (-pl.col("q_value").clip(1e-300, 1).log10()).alias("minus_log10_q"),
        )
    )
    return (
        alt.Chart(frame.to_pandas(), title=title)
        .mark_circle()
        .encode(
            x=alt.X("feature:O", title="feature"),
            y=alt.Y("term:N", title=None, sort=alt.EncodingSortField("log10_p_value")),
            size=alt.Size("overlap:Q", title="overlap"),
            color=alt.Color(
                "minus_log10_q:Q",
                title="−log10 q",
                scale=alt.Scale(
                    scheme="orangered", domain=[0, max(2.0, frame["minus_log10_q"].max() or 0.0)]
                ),
            ),
            tooltip=["feature", "term", "overlap", "q_value", "log10_p_value"],
        )
        .properties(width=max(160, 24 * frame["feature"].n_unique()), height=max(120, 18 * frame.height))
    )
