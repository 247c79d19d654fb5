"""Memory and disk estimates, fit verdicts and quant recommendations (no Qt, no torch).

    judge(model, Machine.from_resources(probe_resources()), context=4096) → Verdict
    estimate_gguf_run(model, context, gpu_layers, gpu_free) → RunEstimate (llama.cpp)
    estimate_hf_load(model, context, dtype, gpu_free) → RunEstimate (transformers)
"""

from app.core.estimate.breakdown import MemoryBreakdown, RunEstimate
from app.core.estimate.llama_cpp import estimate_gguf_run
from app.core.estimate.shape import ModelShape, model_shape
from app.core.estimate.transformers_load import estimate_hf_load
from app.core.estimate.verdict import (
    Candidate,
    CandidateFit,
    Machine,
    Verdict,
    judge,
    max_context,
    recommend,
)

__all__ = ["Candidate", "CandidateFit", "MemoryBreakdown", "ModelShape", "RunEstimate",
           "Machine", "Verdict", "estimate_gguf_run", "estimate_hf_load", "judge",
           "max_context", "model_shape", "recommend"]
