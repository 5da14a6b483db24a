"""report.html: score vs MACs with the budget line and Pareto front, score over trials, proxy agreement."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio

from autokd.io import write_text

NON_SCORES = {"rank", "trial", "space", "arch", "variants", "budget_slack", "seed_arch", "spec_json"}


def pareto_front(frame: pd.DataFrame, score: str) -> pd.DataFrame:
    """Rows not dominated in (higher score, fewer MACs), sorted by MACs."""
    ordered = frame.sort_values(["macs", score], ascending=[True, False])
    best = float("-inf")
    keep = []
    for idx, value in zip(ordered.index, ordered[score]):
        if value > best:
            keep.append(idx)
            best = value
    return ordered.loc[keep]


def score_vs_macs(frame: pd.DataFrame, score: str, budget_macs: int) -> go.Figure:
    data = frame.assign(gmacs=frame["macs"] / 1e9)
    fig = px.scatter(data, x="gmacs", y=score, color="space", hover_data=["trial", "arch", "params"],
                     title=f"{score} vs MACs (budget {budget_macs / 1e9:.3g} GMACs)")
    front = pareto_front(data, score)
    fig.add_trace(go.Scatter(x=front["gmacs"], y=front[score], mode="lines+markers", name="Pareto front",
                             line={"color": "black", "dash": "dot"}))
    fig.add_vline(x=budget_macs / 1e9, line_dash="dash", line_color="red", annotation_text="budget")
    fig.update_xaxes(title="GMACs (1 FLOP = 1 multiply-add)")
    return fig


def score_over_trials(frame: pd.DataFrame, score: str) -> go.Figure:
    data = frame.sort_values("trial")
    fig = px.scatter(data, x="trial", y=score, color="space", title=f"{score} over trials", opacity=0.6)
    fig.add_trace(go.Scatter(x=data["trial"], y=data[score].cummax(), mode="lines", name="best so far",
                             line={"color": "black"}))
    return fig


def proxy_agreement(frame: pd.DataFrame) -> go.Figure:
    """Kendall tau between every pair of recorded scores (params and MACs included as baselines)."""
    cols = [c for c in frame.columns if c not in NON_SCORES and pd.api.types.is_numeric_dtype(frame[c])]
    tau = frame[cols].corr(method="kendall")
    fig = px.imshow(tau, text_auto=".2f", zmin=-1, zmax=1, color_continuous_scale="RdBu",
                    title="Kendall tau between proxies over all trials")
    return fig


def write_report(frame: pd.DataFrame, board: pd.DataFrame, path: Path, score: str, budget_macs: int,
                 title: str) -> Path:
    """Write a self-contained report (plotly.js inlined once: it opens offline)."""
    figures = [score_vs_macs(frame, score, budget_macs), score_over_trials(frame, score), proxy_agreement(frame)]
    parts = [pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    table = board.drop(columns=["spec_json"], errors="ignore").to_html(index=False, float_format="{:.4g}".format)
    body = "\n".join(
        [f"<h1>{html.escape(title)}</h1>", "<h2>Leaderboard</h2>", table, *[f"<div>{p}</div>" for p in parts]]
    )
    write_text(path, f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}"
                    f"td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head><body>{body}</body></html>")
    return path
