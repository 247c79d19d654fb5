"""The peak-memory estimate of a bitsandbytes conversion against what the executor's decoding
really holds: one large chunk decoded by `decode_bnb_rows` in a fresh process, its peak RSS
(VmHWM) above the RSS before it, compared with sizing's per-element figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.convert.sizing import BNB_DECODE_PEAK

ROWS, COLS = 4096, 2048  # 8 Mi values: the peak (~100 MiB) stands far above the noise

CHILD = """
import json, sys
from pathlib import Path
import numpy as np
import torch
from app.core.heap import keep_freed_buffers
from app.core.convert.plan import BnbEncoding, SourceSlice, StoredTensor
from app.core.convert.reading import SourceReader, decode_bnb_rows
from app.core.quant.bnb_state import Bnb4State

kind, folder, rows, cols = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keep_freed_buffers()  # as the executor runs
rng = np.random.default_rng(0)
path = folder / "weights.bin"
if kind == "INT8":
    weight = rng.integers(-127, 128, rows * cols, dtype=np.int8).tobytes()
    scb = rng.random(rows, dtype=np.float32).tobytes()
    path.write_bytes(weight + scb)
    bnb = BnbEncoding("INT8", scb=StoredTensor(path, "w.SCB", len(weight), len(scb), "F32"))
    row_bytes = cols
else:
    packed = rng.integers(0, 256, rows * cols // 2, dtype=np.uint8).tobytes()
    absmax = rng.random(rows * cols // 64, dtype=np.float32).tobytes()
    path.write_bytes(packed + absmax)
    state = Bnb4State(kind.lower(), 64, "bfloat16", (rows, cols))
    bnb = BnbEncoding(kind, state=state,
                      absmax=StoredTensor(path, "w.absmax", len(packed), len(absmax), "F32"))
    row_bytes = cols // 2
piece = SourceSlice(path, "w", 0, rows, cols, row_bytes, kind, bnb=bnb)

def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                if line.startswith(field + ":"))

with SourceReader() as reader:
    decode_bnb_rows(reader, piece, 0, 64, reader.read(path, 0, 64 * row_bytes, "w"))  # warm up
    raw = reader.read(path, 0, rows * row_bytes, "w")
    before = status("VmRSS")
    values = decode_bnb_rows(reader, piece, 0, rows, raw)
    assert values.shape == (rows, cols) and values.dtype == torch.float32
    print(json.dumps({"held": status("VmHWM") - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM")
@pytest.mark.parametrize("kind", ["NF4", "INT8"])
def test_decode_peak_per_element_matches_the_real_buffers(kind: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(tmp_path), str(ROWS),
                           str(COLS)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    held = json.loads(done.stdout.strip().splitlines()[-1])["held"]
    per_element = held / (ROWS * COLS)
    # The estimate neither misses a buffer nor counts one that is not there.
    assert BNB_DECODE_PEAK[kind] * 0.9 <= per_element <= BNB_DECODE_PEAK[kind] * 1.05, \
        f"{kind}: decoding held {per_element:.2f} bytes per value"
