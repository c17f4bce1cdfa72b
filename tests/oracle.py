"""Reference oracle: transformers run on a GGUF file, with results cached on disk.

transformers dequantizes every GGUF tensor to float32 and runs its own PyTorch model, code this
project did not write. Loading takes tens of seconds, so each result is cached in
`$EDGERT_ORACLE_CACHE` (default `~/.cache/edgert/oracle/`) under the sha256 of: the file's name,
size and first-MiB hash, the call kind, the token ids, max_new_tokens and the transformers and
torch versions. Logits are stored with `np.save`, token lists as JSON; no pickle anywhere.

Needs torch and transformers (the `oracle` extra, with accelerate, which GGUF loading requires).
CI installs them; where either is not importable the calls `pytest.skip`, naming it. Models are
loaded once per process, in float32, with `torch.set_num_threads(2)`, and all stay loaded
(SmolLM2-135M about 0.6 GB, Qwen2.5-0.5B about 2.5 GB).
"""
import functools
import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

_MODELS = {}  # realpath of a GGUF -> transformers model, float32, eval mode


def _torch():
    """Import torch and transformers, or skip the calling test naming the one that is missing
    (fail it under CI, which installs them)."""
    for name in ("torch", "transformers"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            why = f"reference oracle needs {name} ({e}); pip install -e '.[oracle]'"
            if os.environ.get("CI"):  # CI installs the oracle: its checks must run there
                pytest.fail(why)
            pytest.skip(why)
    import torch
    return torch


def _cache_file(gguf_path, kind, ids, max_new_tokens, suffix):
    """Path of the cached result of one call; its name is the sha256 of everything that decides it."""
    import torch
    import transformers

    path = Path(gguf_path)
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    identity = dict(file=path.name, size=path.stat().st_size, head=head, kind=kind, ids=ids,
                    max_new_tokens=max_new_tokens, transformers=transformers.__version__,
                    torch=torch.__version__)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    root = Path(os.environ.get("EDGERT_ORACLE_CACHE") or Path.home() / ".cache" / "edgert" / "oracle")
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{kind}-{key}{suffix}"


def _write_atomic(path, write):
    """Call write(binary file) on a temporary file beside path, then rename it onto path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _model(gguf_path):
    """The transformers model for a GGUF file, loaded once per process, float32, EOS stopping off."""
    torch = _torch()
    real = os.path.realpath(gguf_path)
    if real not in _MODELS:
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(2)
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(real), gguf_file=os.path.basename(real),
                                                     dtype=torch.float32)
        # generate() fills an unset eos_token_id from here; None means no EosTokenCriteria, so
        # it runs exactly max_new_tokens steps, always taking the argmax, EOS included.
        model.generation_config.eos_token_id = None
        _MODELS[real] = model.eval()
    return _MODELS[real]


def hf_tokenizer(gguf_path):
    """The transformers tokenizer built from the GGUF's metadata, cached in-process."""
    _torch()
    return _load_tokenizer(os.path.realpath(gguf_path))


@functools.cache
def _load_tokenizer(real):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(real), gguf_file=os.path.basename(real))


def hf_logits(gguf_path, ids):
    """Logits of one teacher-forced forward pass over ids (no BOS added), float32 [len(ids), vocab].

    The array is memory-mapped from the cache file and read-only.
    """
    torch = _torch()
    ids = [int(i) for i in ids]
    path = _cache_file(gguf_path, "logits", ids, None, ".npy")
    if not path.exists():
        with torch.inference_mode():
            logits = _model(gguf_path)(torch.tensor([ids]), use_cache=False).logits[0]
        _write_atomic(path, lambda f: np.save(f, logits.to(torch.float32).numpy(), allow_pickle=False))
    return np.load(path, mmap_mode="r", allow_pickle=False)


def hf_greedy(gguf_path, ids, max_new_tokens=64):
    """Exactly max_new_tokens new token ids (list of int) from `generate(do_sample=False)` after ids.

    No BOS is added and EOS does not stop generation: every step appends the argmax token.
    """
    torch = _torch()
    ids = [int(i) for i in ids]
    path = _cache_file(gguf_path, "greedy", ids, int(max_new_tokens), ".json")
    if not path.exists():
        prompt = torch.tensor([ids])
        with torch.inference_mode():
            out = _model(gguf_path).generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                             max_new_tokens=max_new_tokens)
        new = out[0, len(ids):].tolist()
        assert len(new) == max_new_tokens, (len(new), max_new_tokens)
        _write_atomic(path, lambda f: f.write(json.dumps(new).encode()))
    return json.loads(path.read_text())
