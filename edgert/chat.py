"""Rendering a conversation with the model's own chat template (Jinja2, sandboxed).

The template comes from the model file, so it runs in Jinja2's immutable sandbox with the
same options Hugging Face uses (trim_blocks, lstrip_blocks, loop controls): it can format
text, never touch Python objects or files.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from .errors import EdgeError

# Used when a model ships no template: ChatML, which both supported families were tuned on.
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@lru_cache(maxsize=8)
def _compile(source: str):
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise EdgeError("chat templates need the jinja2 package (pip install jinja2)") from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise EdgeError(f"the model's chat template does not compile: {e}") from None


def render(template: str | None, messages: list[dict], bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True) -> str:
    """messages: [{"role": "system"|"user"|"assistant", "content": str}] -> the prompt text."""
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise EdgeError("chat messages must be dicts with string 'role' and 'content'")
    import jinja2

    try:
        return _compile(template or CHATML).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                   bos_token=bos_token, eos_token=eos_token, tools=None)
    except jinja2.TemplateError as e:
        raise EdgeError(f"the model's chat template failed: {e}") from None
