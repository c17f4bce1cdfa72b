#!/usr/bin/env bash
# Install the peer that `benchmarks/decode.py --peer llama.cpp` measures: llama-cpp-python 0.3.36.
#
#   bash benchmarks/setup_llamacpp.sh           # the prebuilt wheel in ../shared/wheels if there is one
#   bash benchmarks/setup_llamacpp.sh --build   # build from PyPI's source for this CPU (about 20 min on 2 cores)
#
# Not part of CI. The source build compiles llama.cpp with GGML_NATIVE (the host's AVX2/AVX-512/NEON).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
if [ "${1:-}" != "--build" ] && python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  echo "llama-cpp-python $VERSION is installed"
  exit 0
fi
wheel=$(ls ../shared/wheels/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ "${1:-}" != "--build" ] && [ -n "$wheel" ]; then
  python -m pip install "$wheel"
else
  CMAKE_ARGS="-DGGML_NATIVE=ON" python -m pip install --force-reinstall --no-deps --no-binary llama-cpp-python \
    --no-cache-dir "llama-cpp-python==$VERSION"
fi
python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
