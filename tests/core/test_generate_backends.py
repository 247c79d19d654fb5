"""Backend choice, sampling and chat rendering: the small decisions behind a generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.core.errors import OptionError, UnsupportedError
from app.core.formats.scan import inspect_path
from app.core.generate import loader
from app.core.generate.chat import render_chat_template
from app.core.generate.loader import choose_backend
from app.core.generate.sampling import Sampler
from factories import make_gguf


def test_hf_folders_run_in_transformers(tiny_models: dict[str, Path]) -> None:
    info = inspect_path(tiny_models["llama"])
    assert choose_backend(info).name == "transformers"
    with pytest.raises(OptionError, match="convert it to GGUF first"):
        choose_backend(info, "llama.cpp")


def test_gguf_prefers_llama_cpp_and_falls_back_to_transformers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = inspect_path(make_gguf(tmp_path / "tiny.gguf"))
    if loader.llama_cpp_available():
        assert choose_backend(info).name == "llama.cpp"
    assert choose_backend(info, "transformers").name == "transformers"
    monkeypatch.setattr(loader, "llama_cpp_available", lambda: False)
    fallback = choose_backend(info)
    assert fallback.name == "transformers" and "not installed" in fallback.reason
    with pytest.raises(UnsupportedError, match="pip install"):
        choose_backend(info, "llama.cpp")
    other = inspect_path(make_gguf(tmp_path / "rwkv.gguf", arch="rwkv6"))
    with pytest.raises(UnsupportedError, match="cannot read GGUF files of architecture 'rwkv6'"):
        choose_backend(other)


def test_greedy_picks_the_first_maximum() -> None:
    assert Sampler().pick(np.array([0.1, 3.0, 3.0, -1.0])) == 1


def test_sampling_is_seeded_and_respects_top_k_and_top_p() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    draws = [Sampler(1.0, seed=4).pick(logits) for _ in range(3)]
    assert len(set(draws)) == 1  # a fresh sampler with the same seed draws the same
    sampler = Sampler(1.0, seed=0)
    seen = {sampler.pick(logits) for _ in range(300)}
    assert seen == {0, 1, 2, 3}
    top2 = Sampler(1.0, top_k=2, seed=0)
    assert {top2.pick(logits) for _ in range(300)} == {0, 1}
    nucleus = Sampler(1.0, top_p=0.7, seed=0)  # 0.5 + 0.3 reaches 0.7
    assert {nucleus.pick(logits) for _ in range(300)} == {0, 1}


def test_chat_templates_render_like_transformers_and_fail_clearly() -> None:
    template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}")
    text = render_chat_template(template, [{"role": "user", "content": "hi"}], bos_token="<s>")
    assert text == "<s>[user] hi\n[assistant] "
    broken = "{{ raise_exception('only user and assistant roles') }}"
    with pytest.raises(UnsupportedError, match="only user and assistant roles"):
        render_chat_template(broken, [])
