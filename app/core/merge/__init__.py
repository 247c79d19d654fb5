"""Merges that prove coverage: mergekit YAML, a plan from the checkpoints' own tensors, the
methods (linear, SLERP, task arithmetic, TIES, DARE, passthrough) and LoRA adapters."""

from app.core.merge.config import MergeConfig, ModelRef, parse_config, read_config
from app.core.merge.job import MergeRequest
from app.core.merge.plan import MergePlan, TensorAction

__all__ = ["MergeConfig", "MergePlan", "MergeRequest", "ModelRef", "TensorAction",
           "parse_config", "read_config"]
