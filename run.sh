#!/usr/bin/env bash
# Install if needed, then `fedmosaic run` (default: smartwatch, 10 clients). Extra arguments
# go to `fedmosaic run`, e.g. ./run.sh -c dataset=synthetic -c num-clients=50
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$root/scripts/install.sh"
exec "$root/.venv/bin/fedmosaic" run "$@"
