# Sourced by the set-up scripts: create .venv beside the repository and install the project into it.
# Usage: source scripts/env.sh EXTRAS   (EXTRAS: "demo" or "test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UNWEIGHT_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: on this project's machines the CPU build of this release is on local disk
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e "$ROOT[$1]"
export PATH="$VENV/bin:$PATH"
