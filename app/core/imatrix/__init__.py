"""Importance matrices computed from a calibration text (llama.cpp's imatrix format)."""

from app.core.imatrix.job import DEFAULT_CHUNK_SIZE, ImatrixRequest, ImatrixResult

__all__ = ["DEFAULT_CHUNK_SIZE", "ImatrixRequest", "ImatrixResult"]
