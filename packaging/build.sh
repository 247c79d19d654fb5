#!/usr/bin/env bash
# Build the one-folder desktop bundle from a clean checkout:
#
#   packaging/build.sh            CPU build: torch from PyTorch's CPU index (small)
#   packaging/build.sh --cuda     CUDA build: torch's default wheels, which bring their own
#                                 CUDA libraries (the NVIDIA driver is the user's)
#
# Result: dist/modelyard/modelyard (run it; with a command it is the CLI). The script ends by
# running the built app's --version and --self-test, so a bundle that cannot scan, convert
# or generate fails the build.
set -euo pipefail

VARIANT=cpu
[[ "${1:-}" == "--cuda" ]] && VARIANT=cuda
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="build/venv-$VARIANT"

"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --upgrade pip
if [[ "$VARIANT" == cpu ]]; then
  # TORCH_INDEX points at a mirror or a local wheel index where PyTorch's is out of reach.
  "$PIP" install torch --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
else
  "$PIP" install torch
fi
# llama-cpp-python compiles llama.cpp (minutes); CMAKE_ARGS may select a GPU backend.
"$PIP" install ".[llama]" "pyinstaller>=6.10"

# Icons in the sizes desktops want, and the tiny model the self-test scans, into resources/.
QT_QPA_PLATFORM=offscreen "$VENV/bin/python" packaging/make_icons.py
rm -rf resources/selftest/tiny-llama
"$VENV/bin/python" -m app.self_test --write-model resources/selftest/tiny-llama

"$VENV/bin/pyinstaller" --noconfirm --clean --distpath dist --workpath build/pyinstaller \
  packaging/modelyard.spec

APP="dist/modelyard/modelyard"
"$APP" --version
"$APP" --self-test
echo "built $APP ($VARIANT)"
