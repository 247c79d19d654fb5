"""Test generation speed and comparison numbers on the real SmolLM2 and a tiny llama.

    python tests/bench/generate_bench.py [--tokens 64] [--skip-transformers-gguf]

Prints, for SmolLM2-135M-Instruct Q4_1 on each available backend: load time, prompt and
generation speed (tokens/s) and peak RSS; then the quality ladder of a tiny random llama
converted by gguf-py (F16, Q8_0, Q4_0 against the HF source) and SmolLM2 in llama.cpp
against SmolLM2 read by transformers (the same Q4_1 weights, two runtimes).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.formats.model_info import format_bytes  # noqa: E402
from app.core.generate.compare import CompareRequest  # noqa: E402
from app.core.generate.request import GenerateRequest  # noqa: E402
from app.core.jobs import NullReporter, run_job  # noqa: E402
from factories import make_gguf_from_hf, make_hf_model, smollm2_gguf  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper."


def finished(request: Any, label: str, width: int) -> Any:
    """The job's result, or None after printing why it failed."""
    result = run_job(request, NullReporter())
    if result.status != "done":
        print(f"{label:<{width}} failed: {result.error}")
        return None
    return result.value


def generation(path: Path, backend: str, tokens: int) -> None:
    request = GenerateRequest(path, PROMPT, max_tokens=tokens, backend=backend,  # type: ignore[arg-type]
                              use_gpu=True)
    value = finished(request, backend, 22)
    if value is None:
        return
    print(f"{value.backend:<22} load {value.load_s:6.2f} s  prompt {value.n_prompt_tokens:3d} "
          f"tokens at {value.prompt_tokens_per_s:7.1f} tokens/s  generated "
          f"{value.n_generated:3d} at {value.tokens_per_s:6.1f} tokens/s  peak RSS "
          f"{format_bytes(value.peak_bytes)}  ({value.device})")


def comparison(reference: Path, candidate: Path, label: str, **kwargs: object) -> None:
    v = finished(CompareRequest(reference, candidate, **kwargs), label, 28)  # type: ignore[arg-type]
    if v is None:
        return
    print(f"{label:<28} KL mean {v.kl_mean:.3e}  p99 {v.kl_p99:.3e}  top-1 "
          f"{v.top1_agreement * 100:6.2f} %  ppl {v.ppl_ref:8.3f} -> {v.ppl_candidate:8.3f}  "
          f"{v.n_tokens} tokens  peak RSS {format_bytes(v.peak_bytes)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--skip-transformers-gguf", action="store_true",
                        help="skip the slow transformers GGUF runs (about a minute each)")
    args = parser.parse_args()
    smollm2 = smollm2_gguf()
    print(f"SmolLM2-135M-Instruct Q4_1, greedy, {args.tokens} tokens max")
    if importlib.util.find_spec("llama_cpp"):
        generation(smollm2, "llama.cpp", args.tokens)
    if not args.skip_transformers_gguf:
        generation(smollm2, "transformers", args.tokens)

    print("\nquality against the source (bundled sample text)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = make_hf_model(root / "tiny-llama", "llama")
        if importlib.util.find_spec("llama_cpp"):
            for qtype in ("F32", "F16", "Q8_0", "Q4_0"):
                gguf = make_gguf_from_hf(source, root / f"tiny-{qtype}.gguf", qtype)
                comparison(source, gguf, f"tiny llama HF vs GGUF {qtype}")
            if not args.skip_transformers_gguf:
                comparison(smollm2, smollm2, "SmolLM2 llama.cpp vs transformers",
                           candidate_backend="transformers")


if __name__ == "__main__":
    main()
