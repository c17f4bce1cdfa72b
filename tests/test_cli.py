"""The command line with bad input: one clear line on stderr, a non-zero exit, no traceback,
and no partial output file left behind."""
import os
import subprocess
import sys

import numpy as np
import pytest

from edgert.format import write_edge


def edgert(*args, cwd=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "edgert.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, input=stdin, timeout=600)


def assert_clean_failure(r, message):
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("edgert: error:"), r.stderr
    assert message in lines[-1], lines[-1]


def test_missing_model_file(tmp_path):
    assert_clean_failure(edgert("run", tmp_path / "nope.edge", "--prompt", "hi"), "cannot open")


def test_not_an_edge_file(tmp_path):
    p = tmp_path / "x.edge"
    p.write_bytes(b"hello world, not a model" * 10)
    assert_clean_failure(edgert("info", p), "not an .edge file")


def test_truncated_edge_file(tmp_path):
    p = tmp_path / "t.edge"
    write_edge(p, {"kind": "llm"}, [("a", "f32", [1000], lambda: np.zeros(1000, np.float32))])
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    assert_clean_failure(edgert("run", p, "--prompt", "hi"), "truncated")


def test_corrupted_header(tmp_path):
    p = tmp_path / "c.edge"
    write_edge(p, {"kind": "llm"}, [])
    data = bytearray(p.read_bytes())
    data[40] ^= 0xFF
    p.write_bytes(bytes(data))
    assert_clean_failure(edgert("info", p), "corrupt")


def test_convert_non_gguf_leaves_no_output(tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(4096))
    out = tmp_path / "out.edge"
    assert_clean_failure(edgert("convert", src, "-o", out), "unrecognised model format")
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]


def test_convert_truncated_gguf_leaves_no_output(tmp_path, smollm2_gguf):
    src = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as f:
        src.write_bytes(f.read(3_000_000))
    out = tmp_path / "out.edge"
    assert_clean_failure(edgert("convert", src, "-o", out), "truncated")
    assert sorted(os.listdir(tmp_path)) == ["cut.gguf"]


def _tiny_gguf(path, arch):
    gguf = pytest.importorskip("gguf", reason="the converter's tests need the gguf package")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_convert_unsupported_architecture(tmp_path):
    src = tmp_path / "mamba.gguf"
    _tiny_gguf(src, "mamba")
    out = tmp_path / "out.edge"
    r = edgert("convert", src, "-o", out)
    assert_clean_failure(r, "unsupported architecture 'mamba'")
    assert "llama" in r.stderr and "qwen2" in r.stderr
    assert not out.exists()


def test_convert_hostile_length_field(tmp_path):
    src = tmp_path / "evil.gguf"
    _tiny_gguf(src, "llama")
    data = bytearray(src.read_bytes())
    data[24:32] = (1 << 62).to_bytes(8, "little")  # length of the first key string
    src.write_bytes(bytes(data))
    assert_clean_failure(edgert("convert", src, "-o", tmp_path / "o.edge"), "corrupt")


@pytest.mark.slow
def test_prompt_longer_than_context(tmp_path, smollm2_gguf):
    out = tmp_path / "s.edge"
    r = edgert("convert", smollm2_gguf, "-o", out)
    assert r.returncode == 0, r.stderr
    assert_clean_failure(edgert("run", out, "--ctx", "64", "--prompt", "word " * 200, "-n", "4"), "context holds 64")
    r = edgert("convert", smollm2_gguf, "-o", out)
    assert_clean_failure(r, "--force")


@pytest.mark.slow
def test_convert_info_run_perplexity(tmp_path, smollm2_gguf):
    out = tmp_path / "s.edge"
    r = edgert("convert", smollm2_gguf, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "q4_1" in r.stderr and not r.stdout
    r = edgert("info", out)
    assert r.returncode == 0, r.stderr
    assert "llama: 30 layers" in r.stdout and "q8_0" in r.stdout and "ops" in r.stdout
    r = edgert("run", out, "--prompt", "The capital of France is", "--temperature", "0", "-n", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is Paris")
    assert "prefill" in r.stderr and "decode" in r.stderr and "tok/s" in r.stderr
    text = tmp_path / "t.txt"
    text.write_text("The cat sat on the mat. The dog sat on the log. " * 20)
    r = edgert("perplexity", out, "--file", text)
    assert r.returncode == 0, r.stderr
    ppl = float(r.stdout.split()[1])
    assert 1.0 < ppl < 20.0  # a repeated sentence is easy to predict


def test_notice_only_when_slow(capsys):
    """Long first runs (kernel compilation) get a notice on stderr; fast ones print nothing."""
    import time

    from edgert.cli import _notice_after

    with _notice_after(0.05, "still working"):
        time.sleep(0.3)
    with _notice_after(5.0, "never shown"):
        pass
    err = capsys.readouterr().err
    assert "still working" in err and "never shown" not in err
