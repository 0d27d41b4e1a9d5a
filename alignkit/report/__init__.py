"""The run report: one self-contained HTML page (`alignkit report`, and report.html in
every training run folder)."""

from alignkit.report.render import build_report, token_maps_page, write_report

__all__ = ["build_report", "token_maps_page", "write_report"]
