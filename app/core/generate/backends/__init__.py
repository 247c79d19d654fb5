"""Runtimes that run a model for test generation and comparison: llama.cpp and transformers.

Each backend module imports its runtime lazily, inside functions, so importing this package
costs nothing until a model is actually loaded.
"""
