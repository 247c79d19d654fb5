"""Modelyard: a desktop workbench for local LLM weights."""

__version__ = "0.1.0"
