#!/usr/bin/env bash
# Install gc2bench from its lock into the current Python environment (a fresh venv is advised).
#
#   bash install.sh              # torch first, then every other dependency exactly as locked, then gc2bench
#
# - The lock, gc2bench/requirements-lock.txt (refresh: bash .ci/lock), pins every dependency but torch and
#   torchvision, whose build is the machine's choice. Their versions are the `# torch==` / `# torchvision==`
#   lines at its top.
# - torch: an installed torch is kept (a version other than the lock's is reported, and recorded in every
#   result). Without one: `pip install torch==<lock>`, which is PyPI's CUDA 13.0 build on Linux x86_64 and, on
#   machines that carry a local CPU wheel of that version (our build machines), the CPU build. To get the CPU
#   build elsewhere, install it first: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
# - torchvision: installed (the lock's version) only next to a CUDA torch. No registry torchvision imports
#   next to the CPU torch, and gc2bench never imports it (transformers then uses its PIL image processors),
#   so on CPU machines it is left out and `pip check` reports that lmms-eval and timm require it.
# - Everything else: uv (pinned below) installs the lock with --no-deps, so nothing can swap torch.
set -euo pipefail
started=$SECONDS
PYTHON=${PYTHON:-python}
found=$(command -v "$PYTHON") \
  || { echo "install.sh: no $PYTHON on PATH (activate a venv, or PYTHON=python3 bash install.sh)" >&2; exit 1; }
PYTHON="$(cd "$(dirname "$found")" && pwd)/$(basename "$found")"   # absolute, resolved before the cd below
cd "$(dirname "$0")"
LOCK=gc2bench/requirements-lock.txt
UV_VERSION=0.13.9
torch_pin=$(sed -n 's/^# torch==//p' "$LOCK")
torchvision_pin=$(sed -n 's/^# torchvision==//p' "$LOCK")
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if "$PYTHON" -c "import torch" 2>/dev/null; then
  torch_version=$("$PYTHON" -c "import torch; print(torch.__version__)")
  [ "${torch_version%%+*}" = "$torch_pin" ] \
    || echo "install.sh: keeping the installed torch ${torch_version}; the lock's is ${torch_pin} (recorded as a difference)"
else
  echo "install.sh: pip install torch==${torch_pin}"
  pip_install "torch==${torch_pin}"
  torch_version=$("$PYTHON" -c "import torch; print(torch.__version__)")
fi
cuda_torch=$("$PYTHON" -c "import torch; print(int(torch.version.cuda is not None))")

"$PYTHON" -m uv --version >/dev/null 2>&1 || pip_install "uv==${UV_VERSION}"
uv_install() { "$PYTHON" -m uv pip install --python "$PYTHON" --no-deps -q "$@"; }
echo "install.sh: uv pip install -r ${LOCK} (--no-deps, torch held at ${torch_version})"
uv_install -r "$LOCK"
uv_install -e .

if [ "$cuda_torch" = 1 ] && ! "$PYTHON" -c "import torchvision" 2>/dev/null; then
  echo "install.sh: CUDA torch: pip install torchvision==${torchvision_pin}"
  pip_install --no-deps "torchvision==${torchvision_pin}"
  "$PYTHON" -c "import torchvision" 2>/dev/null || {
    echo "install.sh: torchvision ${torchvision_pin} does not import next to torch ${torch_version}; removed"
    "$PYTHON" -m pip uninstall -y -q torchvision
  }
fi
"$PYTHON" -c "import lmms_eval.evaluator, transformers, hydra, gc2bench" \
  || { echo "install.sh: the installed environment does not import; see the messages above" >&2; exit 1; }
"$PYTHON" -m gc2bench.environment --summary
echo "install.sh: gc2bench installed in $((SECONDS - started)) s (torch ${torch_version})"
