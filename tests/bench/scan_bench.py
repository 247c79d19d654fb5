"""Scan speed: a folder of 1,000 generated GGUF model files, headers only.

    python tests/bench/scan_bench.py [--files 1000]

Prints files per second for a cold Python process's first scan and a repeat scan, and the time
to read one real header (SmolLM2, 100k vocabulary strings) with Modelyard's reader and with
gguf-py's GGUFReader, which materialises every metadata value.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.formats.gguf_header import read_gguf_header  # noqa: E402
from app.core.formats.scan import scan_paths  # noqa: E402
from factories import make_gguf, smollm2_gguf  # noqa: E402


def time_header_readers() -> None:
    import gguf

    path = smollm2_gguf()
    for label, read in (("Modelyard read_gguf_header", read_gguf_header),
                        ("gguf-py GGUFReader", gguf.GGUFReader)):
        start = time.perf_counter()
        read(path)
        print(f"{label:<28} {path.name}: {(time.perf_counter() - start) * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # A realistic header: 2 blocks, a 64-token vocabulary, 21 tensors per file.
        template = make_gguf(root / "template.gguf", n_layers=2)
        models = root / "models"
        for index in range(args.files):
            folder = models / f"group{index // 100:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            os.link(template, folder / f"model-{index:04d}.gguf")
        template.unlink()
        for label in ("first scan", "repeat scan"):
            start = time.perf_counter()
            result = scan_paths([models])
            seconds = time.perf_counter() - start
            assert len(result.models) == args.files, len(result.models)
            print(f"{label}: {args.files} files in {seconds:.3f} s = "
                  f"{args.files / seconds:,.0f} files/s "
                  f"({sum(m.n_tensors for m in result.models):,} tensors described)")
    time_header_readers()


if __name__ == "__main__":
    main()
