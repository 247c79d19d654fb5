"""The form's YAML is a pure function of the form, and reads back to the same form."""

from __future__ import annotations

from pathlib import Path

from app.core.merge import parse_config
from app.core.merge.spec import MergeSpec, SpecModel, spec_from_config


def test_spec_yaml_exact_and_round_trip(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    spec = MergeSpec("dare_ties", (SpecModel(a), SpecModel(b, 0.7, 0.4)), base=a,
                     normalize=False, dtype="BF16", seed=3)
    text = spec.to_yaml()
    assert text == (f"merge_method: dare_ties\nbase_model: {a}\nmodels:\n- model: {a}\n"
                    f"- model: {b}\n  parameters:\n    weight: 0.7\n    density: 0.4\n"
                    "parameters:\n  normalize: false\ndtype: bfloat16\nseed: 3\n")
    assert spec_from_config(parse_config(text)) == spec
    slerp = MergeSpec("slerp", (SpecModel(a), SpecModel(b)), base=a, t=0.25)
    assert "parameters:\n  t: 0.25\n" in slerp.to_yaml()
    assert spec_from_config(parse_config(slerp.to_yaml())) == slerp
    union = MergeSpec("linear", (SpecModel(a), SpecModel(b)), union_vocabulary=True)
    assert union.to_yaml().endswith("tokenizer_source: union\n")
    assert spec_from_config(parse_config(union.to_yaml())) == union


def test_configs_the_form_cannot_hold_stay_yaml(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    gradient = (f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters:\n"
                "      weight: [0, 1]\n")
    assert spec_from_config(parse_config(gradient)) is None
    slices = (f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {a}\n"
              "        layer_range: [0, 1]\n")
    assert spec_from_config(parse_config(slices)) is None
    # The form has no place for a tokenizer taken from one model: kept as YAML, not lost.
    tokenizer = f"merge_method: linear\nmodels:\n  - model: {a}\ntokenizer_source: {a}\n"
    assert spec_from_config(parse_config(tokenizer)) is None
