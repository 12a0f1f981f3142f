#!/usr/bin/env bash
# Create .venv and install fedmosaic with everything it needs, unless already up to date.
# torch==2.13.0 goes first: it is a CPU build, and a plain `torch` requirement would
# otherwise pull the newest CUDA build (several GB).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.fedmosaic-installed"
python="${PYTHON:-python3}"

want="$(cat "$root/pyproject.toml" "$root/scripts/install.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

"$python" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"fedmosaic needs Python >= 3.10, found {sys.version.split()[0]}")
PY
echo "installing fedmosaic into $venv (first run takes a few minutes)" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet -e "$root[dev]"
echo "$want" > "$stamp"
