"""Side by side with mergekit, when it is installed (it is not a dependency): the same YAML gives
the same float32 model within a relative difference of 1e-5. DARE draws other random numbers,
so only its deterministic methods are compared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import factories
from app.core.jobs import RecordingReporter
from app.core.merge import MergeRequest

mergekit = pytest.importorskip("mergekit.merge")


@pytest.fixture(scope="module")
def llamas(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("mergekit")
    return [factories.make_hf_model(root / f"m{i}", "llama", seed=i, num_hidden_layers=4,
                                    with_tokenizer=i == 0) for i in range(3)]


CONFIGS = {
    "linear": "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.3}}\n"
              "  - model: {b}\n    parameters: {{weight: [0.2, 0.9]}}\n"
              "  - model: {c}\n    parameters:\n      weight:\n"
              "        - filter: mlp\n          value: 0.6\n        - value: 0.1\n",
    "slerp": "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
             "parameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n"
             "    - value: 0.4\n",
    "task_arithmetic": "merge_method: task_arithmetic\nbase_model: {a}\nmodels:\n"
                       "  - model: {b}\n    parameters: {{weight: 0.5}}\n"
                       "  - model: {c}\n    parameters: {{weight: 0.8}}\n"
                       "parameters:\n  lambda: 0.9\n",
    "ties": "merge_method: ties\nbase_model: {a}\nmodels:\n  - model: {a}\n"
            "  - model: {b}\n    parameters: {{weight: 0.7, density: [0.3, 0.8]}}\n"
            "  - model: {c}\n    parameters: {{weight: 0.4, density: 0.5}}\n",
    "slices": "merge_method: linear\nslices:\n  - sources:\n      - model: {a}\n"
              "        layer_range: [0, 2]\n        parameters: {{weight: 1}}\n"
              "      - model: {b}\n        layer_range: [2, 4]\n"
              "        parameters: {{weight: 3}}\n",
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_model_as_mergekit(name: str, llamas: list[Path], tmp_path: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    text = CONFIGS[name].format(a=llamas[0], b=llamas[1], c=llamas[2]) + "dtype: float32\n"
    MergeRequest(tmp_path / "ours", config_text=text).run(RecordingReporter())
    import yaml

    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(tmp_path / "theirs"),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    ours = load_file(tmp_path / "ours" / "model.safetensors")
    theirs: dict[str, torch.Tensor] = {}
    for shard in sorted((tmp_path / "theirs").glob("*.safetensors")):
        theirs.update(load_file(shard))
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        difference = (ours[key] - value).norm() / value.norm().clamp_min(1e-12)
        assert difference <= 1e-5, (key, float(difference))
