"""Prompt templates (versioned YAML + Jinja2 files), answer scoring, and template evaluation."""

from tunelab.prompts.loader import PromptTemplate, load_template, parse_template, shipped_names

__all__ = ["PromptTemplate", "load_template", "parse_template", "shipped_names"]
