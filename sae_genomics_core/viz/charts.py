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
