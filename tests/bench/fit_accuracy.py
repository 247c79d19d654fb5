"""How close are the fit estimates to measured memory? Prints estimate, measured and error.

    python tests/bench/fit_accuracy.py [--quick]

1. llama.cpp (llama-cpp-python, when installed), n_gpu_layers=0, at contexts 512 and 2048: the
   real SmolLM2 GGUF, generated dense llamas (one with --quick, two without), a mixture of
   experts (8 experts, 2 per token) and a Gemma 2 sliding-window model (llama-cpp-python keeps
   a full-size cache for its windowed layers). Each run is a fresh process that loads the
   model, creates the context and decodes a full context of tokens in micro-batches (the worst
   case the estimate describes: KV cache full, attention over all of it). Measured = the
   process's peak RSS (read by tests/bench/measure.py) minus its RSS before importing
   llama_cpp.
2. transformers, run as Modelyard's test generation runs it (its loader, a prefill of the whole
   context, 8 decoding steps): peak RSS of a generated Llama (float32 and sdpa with --quick;
   float32 and bfloat16, sdpa and eager attention, without), two more shapes (24 layers; wider,
   1024x6) at contexts 2048 and 4096, and a GGUF read by transformers (what runs when
   llama-cpp-python is absent: dequantized to float32), against the estimate for that runtime.
   Each row is the median of --runs fresh processes (3), with their range. Without --quick,
   the same float32 runs with glibc's default heap policy instead of Modelyard's
   (app/core/heap.py) show the spread that policy removes.
3. llama.cpp's compute buffers: the size llama.cpp reports reserving ("CPU compute buffer
   size") for SmolLM2 and 14 generated shapes (hidden sizes 256-4096, 1-8 query heads per KV
   head, vocabularies 512-128k, two MoEs; sparse GGUFs, so no weights are written) at contexts
   256-8192, with flash attention off and on (and on with a Q8_0 KV cache), against the
   estimate's worst case. The last six shapes were measured only after the estimate's formula
   was set.
Modelyard's own jobs (conversion, requantization) are measured against their plans' estimates by
tests/bench/convert_peak.py. Target: within 5 %, and never more than 3 % under (an
under-estimate says "fits" when it does not); rows outside it are marked. The full run takes
about seven minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from bench.measure import mib, run_measured  # noqa: E402

MIB = 1024**2

LLAMA_CHILD = r"""
import json, sys
import psutil
baseline = psutil.Process().memory_info().rss
import llama_cpp as L
path, ctx = sys.argv[1].encode(), int(sys.argv[2])
L.llama_backend_init()
params = L.llama_model_default_params()
params.n_gpu_layers = 0
# As Modelyard's open_llama: on AMX CPUs llama.cpp's extra buffer types crash quantized models.
if any(line.startswith("flags") and " amx_tile" in line for line in open("/proc/cpuinfo")):
    params.use_extra_bufts = False
model = L.llama_model_load_from_file(path, params)
cparams = L.llama_context_default_params()
cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = ctx, 512, 512
cparams.n_threads = cparams.n_threads_batch = 2
cparams.flash_attn_type = 0
context = L.llama_init_from_model(model, cparams)
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
position = 0
while position < ctx:
    n = min(512, ctx - position)
    batch = L.llama_batch_init(n, 0, 1)
    for i in range(n):
        batch.token[i] = (position + i) * 7919 % (n_vocab - 10) + 5
        batch.pos[i] = position + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = i == n - 1
    batch.n_tokens = n
    assert L.llama_decode(context, batch) == 0
    L.llama_batch_free(batch)
    position += n
print(json.dumps({"baseline": baseline}))
"""

HF_CHILD = r"""
import functools, json, sys
import psutil
baseline = psutil.Process().memory_info().rss
import torch
import transformers
from app.core.formats.scan import inspect_path
from app.core.generate.backends.base import LoadOptions
from app.core.generate.backends.hf import load_transformers_model
torch.set_num_threads(2)
path, ctx, dtype, attention = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if sys.argv[5:] == ["default-heap"]:  # glibc's own policy, for comparison
    import app.core.generate.backends.hf as hf
    hf.return_freed_buffers = lambda: False
if attention != "sdpa":  # Modelyard loads with transformers' default; the bench picks another
    transformers.AutoModelForCausalLM.from_pretrained = functools.partial(
        transformers.AutoModelForCausalLM.from_pretrained, attn_implementation=attention)
model = load_transformers_model(inspect_path(path), LoadOptions(
    backend="transformers", dtype=dtype, use_gpu=False, context_tokens=ctx))
logits = model.prefill([(i * 7919) % (model.n_vocab - 10) + 5 for i in range(ctx - 8)])
for _ in range(8):
    logits = model.step(int(logits.argmax()))
print(json.dumps({"baseline": baseline}))
"""


def measure(code: str, *args: str) -> int:
    """The child's peak RSS above its RSS before it imported the runtime ("baseline")."""
    return measure_timed(code, *args)[0]


def measure_timed(code: str, *args: str) -> tuple[int, float]:
    """`measure`, and the child's wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = run_measured([sys.executable, "-c", code, *args], env=env, timeout=1800)
    baseline = int(json.loads(run.stdout.strip().splitlines()[-1])["baseline"])
    return run.peak_rss - baseline, run.seconds


def write_shape(path: Path, n_embd: int, n_head: int, n_head_kv: int, n_ff: int,
                n_vocab: int, n_layers: int = 4) -> Path:
    """A llama of this shape with F16 weights, trained for 32k tokens."""
    from factories import make_gguf

    return make_gguf(path, n_layers=n_layers, n_embd=n_embd, n_ff=n_ff, n_vocab=n_vocab,
                     n_head=n_head, n_head_kv=n_head_kv, f16=True, context_length=32768)


BUFFER_CHILD = r"""
import os, sys
import llama_cpp as L
L.llama_backend_init()
flash, cache = int(sys.argv[1]), int(sys.argv[2])
for item in sys.argv[3:]:
    path, ctx = item.rsplit(":", 1)
    params = L.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_extra_bufts = False  # as Modelyard's open_llama on AMX CPUs
    model = L.llama_model_load_from_file(path.encode(), params)
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = int(ctx), 512, 512
    cparams.n_threads = cparams.n_threads_batch = 1
    cparams.flash_attn_type = flash
    cparams.type_k = cparams.type_v = cache
    context = L.llama_init_from_model(model, cparams)
    L.llama_free(context)
    L.llama_model_free(model)
    os.write(2, b"\nDONE " + item.encode() + b"\n")
"""
BUFFER_LINE = re.compile(r"sched_reserve:\s+CPU compute buffer size =\s+([\d.]+) MiB")
# (n_embd, n_head, n_head_kv, n_ff, n_vocab, n_experts). The first eight are shapes the
# estimate's terms were read from; the rest were measured only after the formula was set.
BUFFER_SHAPES = [
    (1024, 8, 8, 4096, 8000, 0), (2048, 16, 8, 5632, 32000, 0),
    (512, 8, 1, 1024, 128000, 0), (4096, 32, 8, 14336, 128256, 0),
    (4096, 32, 32, 11008, 32000, 0), (3072, 24, 8, 8192, 2000, 0),
    (1536, 12, 2, 8960, 2000, 0), (1024, 8, 8, 1024, 8000, 8),
    (256, 4, 2, 512, 512, 0), (960, 15, 5, 2560, 49152, 0), (2048, 32, 8, 8192, 128256, 0),
    (3584, 28, 4, 18944, 2000, 0), (1024, 16, 4, 512, 2000, 8), (512, 4, 4, 2048, 2000, 0),
]
FITTED_SHAPES = 8


def reported_compute_buffers(items: list[tuple[Path, int]], flash: bool,
                             cache: str = "F16") -> list[int]:
    """llama.cpp's logged compute-buffer size for each (model, n_ctx), in one process."""
    from gguf import GGMLQuantizationType

    args = [f"{path}:{ctx}" for path, ctx in items]
    result = subprocess.run([sys.executable, "-c", BUFFER_CHILD, str(int(flash)),
                             str(GGMLQuantizationType[cache].value), *args],
                            capture_output=True, text=True, timeout=1800)
    sizes, current = [], None
    for line in result.stderr.splitlines():
        if match := BUFFER_LINE.search(line):
            current = int(float(match.group(1)) * MIB)
        elif line.startswith("DONE ") and current is not None:
            sizes.append(current)
            current = None
    if result.returncode != 0 or len(sizes) != len(items):
        raise RuntimeError(result.stderr[-2000:])
    return sizes


def bench_compute_buffers(tmp: Path, quick: bool) -> list[float]:
    """Shapes beyond the bench's real models, as sparse GGUFs (no weight data is written)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return []
    from app.core.estimate.llama_cpp import compute_buffers
    from app.core.estimate.shape import model_shape
    from app.core.formats.scan import inspect_path
    from factories import make_sparse_llama_gguf, smollm2_gguf

    shapes = BUFFER_SHAPES[:2] + BUFFER_SHAPES[FITTED_SHAPES:FITTED_SHAPES + 1] if quick \
        else BUFFER_SHAPES
    models = [(smollm2_gguf(), True)] + [
        (make_sparse_llama_gguf(tmp / f"buffers-{'-'.join(map(str, s))}.gguf", n_embd=s[0],
                                n_head=s[1], n_head_kv=s[2], n_ff=s[3], n_vocab=s[4],
                                n_experts=s[5]), BUFFER_SHAPES.index(s) < FITTED_SHAPES)
        for s in shapes]
    contexts = (512, 4096) if quick else (256, 512, 1024, 2048, 4096, 8192)
    items = [(path, ctx) for path, _ in models for ctx in contexts]
    errors = []
    for flash, cache in ((False, "F16"), (True, "F16"), (True, "Q8_0")):
        print(f"llama.cpp compute buffer reserved (CPU), flash attention "
              f"{'on' if flash else 'off'}, {cache} KV cache, reported vs estimated"
              f"{'' if not flash else ' (rows outside the target only)'}:")
        fitted, other = [], []
        for (path, ctx), reported in zip(items, reported_compute_buffers(items, flash, cache),
                                         strict=True):
            shape = model_shape(inspect_path(path))
            estimate = compute_buffers(shape, ctx, flash_attention=flash,
                                       cache_type=cache).reserved
            error = (estimate - reported) / reported * 100
            label = f"{path.stem.removeprefix('buffers-')[:30]} ctx {ctx}"
            if not flash:
                row(label, estimate, reported)
                errors.append(error)
            elif not -3 <= error <= 5:
                row(label, estimate, reported)
            (fitted if dict(models)[path] else other).append(error)
        for name, group in (("shapes the terms were read from", fitted),
                            ("other shapes", other)):
            if group:
                print(f"  {name}: {len(group)} runs, mean |error| "
                      f"{sum(map(abs, group)) / len(group):.1f} %, range {min(group):+.1f} "
                      f"to {max(group):+.1f} %")
    return errors


def row(label: str, estimate: int, measured: int, spread: str = "") -> float:
    error = (estimate - measured) / measured * 100
    outside = "" if -3 <= error <= 5 else "  OUTSIDE the target"
    print(f"  {label:<46} estimate {mib(estimate, 8, 1)} MiB  measured {mib(measured, 8, 1)} MiB"
          f"{spread}  error {error:+6.1f} %{outside}", flush=True)
    return error


def measure_runs(runs: int, code: str, *args: str) -> tuple[int, str]:
    """The median peak of `runs` fresh processes, and their range and median wall time as
    printed text (with glibc's default heap policy a transformers process's peak varies by
    several % run to run)."""
    results = [measure_timed(code, *args) for _ in range(runs)]
    peaks = sorted(peak for peak, _ in results)
    seconds = sorted(time for _, time in results)[len(results) // 2]
    median = peaks[len(peaks) // 2] if len(peaks) % 2 else (
        peaks[len(peaks) // 2 - 1] + peaks[len(peaks) // 2]) // 2
    spread = f" (runs {peaks[0] / MIB:.0f}-{peaks[-1] / MIB:.0f}, {seconds:.1f} s)"
    return median, spread


def bench_models(tmp: Path, quick: bool) -> list[Path]:
    """SmolLM2 (real, Q4_1), dense llamas, a mixture of experts and a sliding-window model."""
    from factories import make_gguf, make_sliding_window_gguf, smollm2_gguf

    models = [smollm2_gguf()]
    shapes = [(1024, 8, 8, 4096, 8000), (2048, 16, 8, 5632, 32000)]
    for shape in shapes[: 1 if quick else None]:
        models.append(write_shape(tmp / f"shape-{'-'.join(map(str, shape))}.gguf", *shape))
    # A mixture of experts (8 experts, 2 per token), as llama.cpp loads Mixtral.
    models.append(make_gguf(tmp / "moe-8x.gguf", n_layers=4, n_embd=1024, n_ff=1024,
                            n_vocab=8000, n_head=8, n_head_kv=8, n_experts=8, f16=True,
                            context_length=32768))
    # Gemma 2: every other layer attends a 256-token window (llama-cpp-python: full-size cache).
    models.append(make_sliding_window_gguf(tmp / "gemma2-swa256.gguf"))
    return models


def bench_llama_cpp(tmp: Path, quick: bool) -> list[float]:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama.cpp: llama-cpp-python is not installed; skipped")
        return []
    from app.core.estimate import estimate_gguf_run
    from app.core.formats.scan import inspect_path

    print("llama.cpp, CPU only, context filled:")
    errors = []
    for path in bench_models(tmp, quick):
        model = inspect_path(path)
        for ctx in (512, 2048):
            estimate = estimate_gguf_run(model, ctx).ram.total
            errors.append(row(f"{path.name[:34]} ctx {ctx}", estimate,
                              measure(LLAMA_CHILD, str(path), str(ctx))))
    return errors


def bench_transformers(tmp: Path, quick: bool, runs: int) -> list[float]:
    from app.core.estimate import estimate_hf_load
    from app.core.formats.scan import inspect_path
    from factories import make_hf_model

    def llama(name: str, hidden: int, ff: int, layers: int, heads: int) -> Path:
        return make_hf_model(tmp / name, "llama", hidden_size=hidden, intermediate_size=ff,
                             num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=4, vocab_size=32000,
                             max_position_embeddings=4096)

    shapes = {"llama 512x8": llama("hf-llama", 512, 1536, 8, 8)}
    dtypes = ("float32",) if quick else ("float32", "bfloat16")
    # eager holds the score matrix the default (sdpa) never does
    attentions = ("sdpa",) if quick else ("sdpa", "eager")
    cases = [("llama 512x8", attention, dtype, ctx) for attention in attentions
             for dtype in dtypes for ctx in (512, 2048)]
    if not quick:
        shapes["llama 512x24"] = llama("hf-llama24", 512, 1536, 24, 8)
        shapes["llama 1024x6"] = llama("hf-wide", 1024, 4096, 6, 16)
        cases += [(name, "sdpa", "float32", ctx) for name in ("llama 512x24", "llama 1024x6")
                  for ctx in (2048, 4096)]
    print(f"transformers, CPU, Modelyard's generation after a full context (median of {runs} "
          "runs):")
    errors = []
    for name, attention, dtype, ctx in cases:
        folder = shapes[name]
        estimate = estimate_hf_load(inspect_path(folder), ctx, dtype=dtype,
                                    attention=attention).ram.total
        measured, spread = measure_runs(runs, HF_CHILD, str(folder), str(ctx), dtype, attention)
        errors.append(row(f"{name} {dtype} {attention} ctx {ctx}", estimate, measured, spread))
    if not quick:
        print(f"the same with glibc's default heap policy (median of {runs} runs; not in the "
              "summary):")
        for name in ("llama 512x8", "llama 512x24"):
            folder = shapes[name]
            estimate = estimate_hf_load(inspect_path(folder), 2048, dtype="float32").ram.total
            measured, spread = measure_runs(runs, HF_CHILD, str(folder), "2048", "float32",
                                            "sdpa", "default-heap")
            row(f"{name} float32 sdpa ctx 2048, default heap", estimate, measured, spread)
    return errors


def bench_transformers_gguf(quick: bool, runs: int) -> list[float]:
    from app.core.estimate import estimate_hf_load
    from app.core.formats.scan import inspect_path
    from factories import smollm2_gguf

    path = smollm2_gguf()
    model = inspect_path(path)
    print(f"transformers reading a GGUF (no llama-cpp-python), CPU, full context (median of "
          f"{runs} runs):")
    errors = []
    for ctx in (512,) if quick else (512, 2048):
        estimate = estimate_hf_load(model, ctx).ram.total
        measured, spread = measure_runs(runs, HF_CHILD, str(path), str(ctx), "float32", "sdpa")
        errors.append(row(f"{path.name[:34]} float32 ctx {ctx}", estimate, measured, spread))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer models and contexts")
    parser.add_argument("--skip-llama", action="store_true", help="skip the llama.cpp part")
    parser.add_argument("--buffers-only", action="store_true",
                        help="only llama.cpp's compute buffers (part 3)")
    parser.add_argument("--runs", type=int, default=3,
                        help="processes per transformers row (the median is compared)")
    args = parser.parse_args()
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        only = args.buffers_only
        llama = [] if args.skip_llama or only else bench_llama_cpp(Path(tmp), args.quick)
        buffers = [] if args.skip_llama else bench_compute_buffers(Path(tmp), args.quick)
        hf = [] if only else bench_transformers(Path(tmp), args.quick, args.runs)
        hf_gguf = [] if only else bench_transformers_gguf(args.quick, args.runs)
    for label, errors in (("llama.cpp", llama), ("compute buffers", buffers),
                          ("transformers", hf), ("transformers (GGUF)", hf_gguf)):
        if errors:
            worst = max(errors, key=abs)
            print(f"{label}: mean |error| {sum(map(abs, errors)) / len(errors):.1f} %, "
                  f"worst {worst:+.1f} % over {len(errors)} runs")
    print(f"{time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
