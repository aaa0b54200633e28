"""Figures and a self-contained HTML report of a group comparison."""

from .html import build_figures, render_html, write_html

__all__ = ["build_figures", "render_html", "write_html"]
