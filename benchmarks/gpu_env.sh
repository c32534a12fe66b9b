# Sourced on a GPU machine that has torch/triton/numba but not this project installed:
# puts the packages on PYTHONPATH (runtime/ is the `infire` package) and installs carried wheels.
set -eo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$REPO"/.whl/*.whl
fi
mkdir -p /tmp/pkgs
ln -sfn "$REPO/unweight" /tmp/pkgs/unweight
ln -sfn "$REPO/runtime" /tmp/pkgs/infire
ln -sfn "$REPO/cli" /tmp/pkgs/unweight_cli
export PYTHONPATH="/tmp/pkgs:/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, numba, numpy, zstandard, unweight, infire; print('torch', torch.__version__, 'triton', triton.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__)"
