"""Chat templates: rendered like Hugging Face renders them, and sandboxed."""
import pytest

import oracle
from edgert import chat
from edgert.errors import EdgeError

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
     {"role": "user", "content": "Another, in 日本語 please 🍎"}],
]


def test_hostile_template_cannot_reach_python():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(EdgeError, match="chat template failed"):
        chat.render(evil, CONVERSATIONS[0])


def test_raise_exception_in_template_is_a_clear_error():
    with pytest.raises(EdgeError, match="only user roles"):
        chat.render("{{ raise_exception('only user roles') }}", CONVERSATIONS[0])


def test_bad_messages():
    with pytest.raises(EdgeError, match="role"):
        chat.render(None, [{"content": "no role"}])


def test_default_is_chatml():
    assert chat.render(None, CONVERSATIONS[0]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("model", ["smollm2_gguf", "qwen05_gguf"])
def test_matches_transformers(model, conv, request):
    path = request.getfixturevalue(model)
    meta = _meta(path)
    hf = oracle.hf_tokenizer(path)
    want = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert chat.render(meta["tokenizer.chat_template"], conv, bos_token=hf.bos_token or "",
                       eos_token=hf.eos_token or "") == want


_META = {}


def _meta(path):
    if path not in _META:
        from edgert.convert.gguf_file import open_gguf
        _META[path] = open_gguf(path)[1]
    return _META[path]
