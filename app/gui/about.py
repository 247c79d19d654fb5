"""The About box: Modelyard's version, the libraries that do the work, and the GPUs.

Versions come from the installed packages' metadata, so opening the box never imports torch
(seconds, and a CUDA context the window process must not create); the GPUs are the ones the
status bar already found through NVML.
"""

from __future__ import annotations

import platform
from importlib import metadata

from PySide6.QtWidgets import QMessageBox, QWidget

from app import __version__
from app.core.formats.model_info import format_bytes
from app.core.resources import Resources

# (what the user knows it as, the distribution that provides it)
LIBRARIES = (("torch", "torch"), ("transformers", "transformers"), ("gguf", "gguf"),
             ("llama.cpp (llama-cpp-python)", "llama-cpp-python"),
             ("huggingface_hub", "huggingface_hub"), ("safetensors", "safetensors"),
             ("bitsandbytes", "bitsandbytes"), ("PySide6", "PySide6-Essentials"))


def library_versions() -> list[tuple[str, str]]:
    versions = []
    for label, distribution in LIBRARIES:
        try:
            versions.append((label, metadata.version(distribution)))
        except metadata.PackageNotFoundError:
            if distribution == "PySide6-Essentials":
                try:
                    versions.append((label, metadata.version("PySide6")))
                    continue
                except metadata.PackageNotFoundError:
                    pass
            versions.append((label, "not installed"))
    return versions


def gpu_lines(resources: Resources | None) -> list[str]:
    if resources is None:
        return ["GPUs: not probed yet"]
    if not resources.gpus:
        return [f"GPU: none ({resources.gpu_note})" if resources.gpu_note else "GPU: none"]
    return [f"GPU {g.index}: {g.name}, {format_bytes(g.total_bytes)}" for g in resources.gpus]


def about_text(resources: Resources | None) -> str:
    rows = [f"<tr><td>{label}</td><td>{version}</td></tr>"
            for label, version in library_versions()]
    gpus = "<br>".join(gpu_lines(resources))
    return (f"<h3>Modelyard {__version__}</h3>"
            "<p>A workbench for local LLM weights: what fits, conversions, tests.</p>"
            f"<table cellspacing='4'>{''.join(rows)}</table>"
            f"<p>Python {platform.python_version()} on {platform.system()}<br>{gpus}</p>")


def show_about(parent: QWidget, resources: Resources | None) -> None:
    QMessageBox.about(parent, "About Modelyard", about_text(resources))
