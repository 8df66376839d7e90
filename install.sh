#!/usr/bin/env bash
# Install gc2bench and its dependencies into the current Python environment (a venv is advised).
#
# - torch: kept if already installed (install the CUDA build you want first on a GPU machine);
#   otherwise `torch` from PyPI where an NVIDIA GPU is visible, else the CPU build torch==2.13.0.
# - Everything else is installed with torch held at the installed version, so no dependency
#   can swap it for another build.
# - lmms-eval requires torchvision; next to a CPU torch the PyPI torchvision wheel is a CUDA
#   build that breaks `import lmms_eval.evaluator` (operator torchvision::nms does not exist).
#   When that import fails, torchvision is removed: transformers then uses its PIL image
#   processors. decord (imported by lmms-eval's llava_hf) is a regular dependency.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check "$@"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip_install torch
  else
    pip_install "torch==2.13.0"
  fi
fi
torch_version=$("$PYTHON" -c "import torch; print(torch.__version__)")
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==${torch_version}" > "$constraints"
pip_install -c "$constraints" -e ".[test]"

if ! "$PYTHON" -c "import torchvision" 2>/dev/null; then
  echo "install.sh: torchvision does not import next to torch ${torch_version}; removing it (PIL image processors are used instead)"
  "$PYTHON" -m pip uninstall -y torchvision
fi
"$PYTHON" -c "import lmms_eval.evaluator, transformers, hydra, gc2bench" \
  || { echo "install.sh: the installed environment does not import; see the messages above" >&2; exit 1; }
echo "install.sh: gc2bench installed (torch ${torch_version})"
