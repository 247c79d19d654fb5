#!/usr/bin/env bash
# Build the one-folder desktop bundle from a clean checkout:
#
#   packaging/build.sh            CPU build: a CPU-only torch (small)
#   packaging/build.sh --cuda     CUDA build: torch's default Linux wheels, which bring their own
#                                 CUDA libraries (the NVIDIA driver is the user's)
#
# Environment (all optional):
#   PYTHON       the Python that makes the build's venv (default python3; 3.10 to 3.12)
#   TORCH_SPEC   the torch requirement (default torch==2.13.0, the version the tests run)
#   TORCH_INDEX  where torch comes from. CPU build default: PyTorch's CPU index,
#                https://download.pytorch.org/whl/cpu; CUDA build default: pip's own indexes.
#                Set it empty (TORCH_INDEX=) to take torch from pip's configured indexes, e.g.
#                a mirror or a local wheel folder that holds a CPU build.
#   LLAMA_SPEC   the llama-cpp-python requirement (default llama-cpp-python==0.3.36). pip
#                compiles it (minutes) unless its wheel cache has the build; CMAKE_ARGS selects
#                a GPU backend, e.g. CMAKE_ARGS="-DGGML_CUDA=on".
#
# Result: dist/modelyard/modelyard (without arguments it opens the window; with a command it is
# the CLI). The script ends by running the built app's --version, --self-test (scan, convert and
# generate on a bundled tiny model), a generation in transformers and --window-check (opens the
# main window offscreen), so a bundle that cannot do those fails the build.
set -euo pipefail

VARIANT=cpu
case "${1:-}" in
  "") ;;
  --cuda) VARIANT=cuda ;;
  *) echo "usage: packaging/build.sh [--cuda]" >&2; exit 2 ;;
esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
LLAMA_SPEC="${LLAMA_SPEC:-llama-cpp-python==0.3.36}"
if [[ "$VARIANT" == cpu ]]; then
  TORCH_INDEX="${TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
else
  TORCH_INDEX="${TORCH_INDEX-}"
fi
VENV="build/venv-$VARIANT"
STARTED=$SECONDS

echo "== venv $VENV ($("$PYTHON" --version))"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
echo "== $TORCH_SPEC from ${TORCH_INDEX:-the configured indexes of pip}"
if [[ -n "$TORCH_INDEX" ]]; then
  "$PY" -m pip install --quiet "$TORCH_SPEC" --index-url "$TORCH_INDEX"
else
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi
echo "== $LLAMA_SPEC${CMAKE_ARGS:+ with CMAKE_ARGS=$CMAKE_ARGS}"
LLAMA_OPTIONS=()
# pip's wheel cache does not tell builds with different CMAKE_ARGS apart: with a backend asked
# for, a cached CPU build must not be taken.
[[ -n "${CMAKE_ARGS:-}" ]] && LLAMA_OPTIONS=(--no-cache-dir)
"$PY" -m pip install --quiet "${LLAMA_OPTIONS[@]}" "$LLAMA_SPEC"
echo "== Modelyard and PyInstaller"
# The torch just installed already satisfies the project's requirement, so pip keeps it.
"$PY" -m pip install --quiet . "pyinstaller>=6.10"

echo "== the self-test's tiny model"
rm -rf resources/selftest/tiny-llama
"$PY" -m app.self_test --write-model resources/selftest/tiny-llama

echo "== PyInstaller"
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist \
  --workpath build/pyinstaller packaging/modelyard.spec

echo "== system libraries the window's Qt plugins need that the bundle lacks"
# PyInstaller bundles the libraries it finds on this machine; the rest must be on each user's.
INTERNAL="dist/modelyard/_internal"
MISSING=$(for plugin in "$INTERNAL"/PySide6/Qt/plugins/platforms/lib*.so; do
  LD_LIBRARY_PATH="$INTERNAL:$INTERNAL/PySide6/Qt/lib" ldd "$plugin" 2>/dev/null || true
done | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
if [[ -n "$MISSING" ]]; then
  echo "users need from their system: $MISSING"
  echo "(on Debian/Ubuntu the packages libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1"
  echo " libwayland-cursor0; installed on the build machine, they travel in the bundle)"
else
  echo "none"
fi

echo "== checks of the desktop files"
if command -v desktop-file-validate >/dev/null; then
  desktop-file-validate packaging/modelyard.desktop
else
  echo "desktop-file-validate is not installed (desktop-file-utils): .desktop entry not checked"
fi
if command -v appstreamcli >/dev/null; then
  appstreamcli validate --no-net packaging/io.github.modelyard.Modelyard.metainfo.xml
elif command -v appstream-util >/dev/null; then
  appstream-util validate-relax --nonet packaging/io.github.modelyard.Modelyard.metainfo.xml
else
  echo "neither appstreamcli nor appstream-util is installed: metainfo not checked"
fi

echo "== checks of the built app"
APP="dist/modelyard/modelyard"
"$APP" --version
"$APP" --self-test
# The self-test generates with llama.cpp; the HF folder runs in transformers, lazily imported.
"$APP" generate resources/selftest/tiny-llama --prompt Hello --max-tokens 4 --cpu
QT_QPA_PLATFORM=offscreen "$APP" --window-check
echo "built $APP ($VARIANT): $(du -sh dist/modelyard | cut -f1) in $((SECONDS - STARTED)) s"
