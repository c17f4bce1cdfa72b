"""Session fixtures: real GGUF models and the text corpora in tests/data.

Models come from `<repo root>/../shared/models/fetch_models.py NAME`, which stores them in
`$EDGERT_MODELS` (default `~/.cache/edgert/models`), checks size and sha256, and downloads only
what is missing. A fixture that cannot get its model fails the tests using it, with the reason.
"""
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
# `python -m pytest` puts the working directory, the repo root, first on sys.path; there our
# kernels/ folder (installed as edgert.kernels) would shadow the `kernels` package that
# transformers imports (its hub kernels). edgert itself is found through its install.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TESTS.parent]
FETCH_MODELS = TESTS.parent.parent / "shared" / "models" / "fetch_models.py"


def fetch_model(name):
    """Path (str) of the model `name` of fetch_models.py, fetched if not already there."""
    if not FETCH_MODELS.is_file():
        pytest.fail(f"cannot fetch model {name!r}: {FETCH_MODELS} not found")
    run = subprocess.run([sys.executable, str(FETCH_MODELS), name], capture_output=True, text=True)
    if run.returncode != 0:
        pytest.fail(f"fetch_models.py {name} failed (exit {run.returncode}): {run.stderr.strip()[-2000:]}")
    # The script prints "<name> <path>" per model.
    return run.stdout.strip().splitlines()[-1].split(" ", 1)[1]


def _gguf_fixture(fixture_name, model_name):
    @pytest.fixture(scope="session", name=fixture_name)
    def gguf_path():
        """Path (str) of the GGUF file, fetched once per session."""
        return fetch_model(model_name)

    return gguf_path


def _edge_fixture(fixture_name, gguf_fixture):
    @pytest.fixture(scope="session", name=fixture_name)
    def edge_path(request, tmp_path_factory):
        """Path (str) of the GGUF converted with the default settings, once per session."""
        from edgert.convert import convert

        out = tmp_path_factory.mktemp("edge") / f"{fixture_name}.edge"
        convert(request.getfixturevalue(gguf_fixture), str(out), progress=False)
        return str(out)

    return edge_path


smollm2_gguf = _gguf_fixture("smollm2_gguf", "smollm2-135m")
qwen05_gguf = _gguf_fixture("qwen05_gguf", "qwen2.5-coder-0.5b")
qwen15_gguf = _gguf_fixture("qwen15_gguf", "qwen2.5-coder-1.5b")
smollm2_edge = _edge_fixture("smollm2_edge", "smollm2_gguf")
qwen05_edge = _edge_fixture("qwen05_edge", "qwen05_gguf")
qwen15_edge = _edge_fixture("qwen15_edge", "qwen15_gguf")


@pytest.fixture(scope="session")
def english_text():
    """About 1100 words of original English prose (str), over 1300 SmolLM2 tokens."""
    return (DATA / "english.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def prompts():
    """Twelve short varied prompts (list of str): facts, instructions, code, story openings."""
    return (DATA / "prompts.txt").read_text(encoding="utf-8").splitlines()
