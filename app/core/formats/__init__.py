"""Detect and describe model files: GGUF, Hugging Face folders, the HF cache."""
