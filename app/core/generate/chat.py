"""Chat prompts: the model's own Jinja chat template, rendered the way transformers does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.core.errors import OptionFact, UnsupportedError

Message = dict[str, str]


def chat_messages(prompt: str, system: str | None = None) -> list[Message]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


def _raise(message: str) -> None:
    raise ValueError(message)


def render_chat_template(template: str, messages: list[Message], *, bos_token: str = "",
                         eos_token: str = "", add_generation_prompt: bool = True,
                         **extra: Any) -> str:
    """Render a chat template in a sandbox (templates come with downloaded models).

    Same environment as transformers' `apply_chat_template`: trim_blocks, lstrip_blocks,
    `raise_exception` and `strftime_now`, so a template renders here as it does there.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=messages, bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt, **extra)
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        raise UnsupportedError(f"the model's chat template cannot be rendered ({exc})",
                               hint="generate with the raw prompt instead",
                               option=OptionFact("use_chat_template", False)) from None

