"""Leaderboards (pandas) and the HTML report (plotly)."""

from autokd.report.html import write_report
from autokd.report.leaderboard import leaderboard, trials_frame, write_top_specs

__all__ = ["leaderboard", "trials_frame", "write_report", "write_top_specs"]
