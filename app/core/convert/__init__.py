"""Conversion: HF safetensors (plain or bitsandbytes) → GGUF, GGUF → GGUF (requantize),
GGUF or bitsandbytes → plain HF safetensors. Every conversion is one typed tensor program
(`ConversionPlan`): inputs with their encoding, and per output tensor its operations; the same
program is the dry run (`summary_lines`, `to_json`), the memory estimate and what the job runs.

    plan = plan_conversion("models/Llama-3.2-1B", "out/Llama-3.2-1B-Q8_0.gguf", out_type="Q8_0")
    plan.output_bytes, plan.estimated_peak_bytes, plan.naive_peak_bytes, plan.tensors
    result = run_job(ConvertRequest(Path("models/Llama-3.2-1B"), out_type="Q8_0"), reporter)

Planning reads headers only and refuses everything that cannot work before a byte is written;
the job streams one chunk of rows at a time into `NAME.part` and renames it when complete.
"""

from app.core.convert.job import (
    ConvertRequest,
    ConvertResult,
    check_disk,
    check_memory,
    check_resources,
    execute_plan,
)
from app.core.convert.metadata import MetaEntry
from app.core.convert.naming import default_output_name, default_output_path
from app.core.convert.plan import ConversionPlan, HFOutput, SourceSlice, TensorPlan, TypeRules
from app.core.convert.planner import plan_conversion, plan_for_type, resolve_device
from app.core.convert.summary import summary_lines
from app.core.convert.tensor_types import (
    GGUF_OUTPUT_TYPES,
    HF_OUTPUT_DTYPES,
    writable_output_types,
)

__all__ = [
    "GGUF_OUTPUT_TYPES", "HF_OUTPUT_DTYPES", "ConversionPlan", "ConvertRequest", "ConvertResult",
    "HFOutput", "MetaEntry", "SourceSlice", "TensorPlan", "TypeRules", "check_disk",
    "check_memory", "check_resources", "default_output_name", "default_output_path",
    "execute_plan", "plan_conversion", "plan_for_type", "resolve_device", "summary_lines",
    "writable_output_types",
]
