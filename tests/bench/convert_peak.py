"""Peak RSS of Modelyard's convert jobs against the plan's estimate (estimate error in %).

    .venv/bin/python tests/bench/convert_peak.py [--keep DIR]

Builds a ~330 MB Llama (F32 and BF16 copies) and a GGUF from it, then runs each conversion in a
fresh process, whose peak RSS tests/bench/measure.py reads. The constants in
app/core/convert/sizing.py are calibrated from this output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from bench.measure import mib, run_measured  # noqa: E402

CHILD = """
import json, sys
from pathlib import Path
from app.core.convert import ConvertRequest
from app.core.jobs import NullReporter
source, target, out_type, to = sys.argv[1:5]
request = ConvertRequest(Path(source), Path(target), out_type, to=to, device="cpu",
                         overwrite=True)
plan = request.plan()
request.run(NullReporter())
print(json.dumps({"estimate": plan.estimated_peak_bytes, "naive": plan.naive_peak_bytes,
                  "input": plan.input_bytes}))
"""


def measure(source: Path, target: Path, out_type: str, to: str = "gguf") -> dict[str, int]:
    """The plan's figures and the whole conversion process's peak RSS ("peak")."""
    run = run_measured([sys.executable, "-c", CHILD, str(source), str(target), out_type, to],
                       cwd=ROOT)
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "peak": run.peak_rss}


def main() -> None:
    import factories

    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", type=Path, help="build the models here and keep them")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="convert-peak-"))
    shape = dict(vocab_size=32768, hidden_size=1024, intermediate_size=2816,
                 num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
                 with_tokenizer=False)
    models = {}
    for dtype in ("float32", "bfloat16"):
        path = folder / f"llama-{dtype}"
        if not path.exists():
            factories.make_hf_model(path, "llama", dtype=dtype, **shape)
        models[dtype] = path
    gguf_q8 = folder / "llama-Q8_0.gguf"
    if not gguf_q8.exists():
        measure(models["bfloat16"], gguf_q8, "Q8_0")
    cases = [(models["float32"], "Q8_0", "gguf"), (models["float32"], "F16", "gguf"),
             (models["bfloat16"], "Q8_0", "gguf"), (models["bfloat16"], "F16", "gguf"),
             (models["bfloat16"], "BF16", "gguf"), (gguf_q8, "F16", "gguf"),
             (gguf_q8, "F16", "hf")]
    print(f"{'source':<22} {'to':<10} {'input MB':>9} {'peak MB':>8} {'estimate':>9} "
          f"{'error':>7} {'naive MB':>9}")
    for source, out_type, to in cases:
        target = folder / ("out-hf" if to == "hf" else f"out-{out_type}.gguf")
        m = measure(source, target, out_type, to)
        error = (m["estimate"] - m["peak"]) / m["peak"] * 100
        print(f"{source.name:<22} {to + ' ' + out_type:<10} {mib(m['input'], 9)} "
              f"{mib(m['peak'], 8)} {mib(m['estimate'], 9)} {error:+6.1f}% "
              f"{mib(m['naive'], 9)}")


if __name__ == "__main__":
    main()
