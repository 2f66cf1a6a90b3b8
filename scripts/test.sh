#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them all.
#   bash scripts/test.sh [pytest args...]     every layer (what CI runs)
#   bash scripts/test.sh -m unit [args...]    the unit layer alone, in seconds: no installs once set up
# Needs root (or sudo) for apt-get; Python packages go to the current Python.
set -euo pipefail
cd "$(dirname "$0")/.."

# The unit layer (tests/unit) runs no program and no npm package: the Debian packages and npm
# folders below are for the other layers, and once this Python has the project and its test
# dependencies, pip's resolve and editable build would take longer than the layer itself.
if [ "${1:-}" = "-m" ] && [ "${2:-}" = "unit" ]; then
  python3 -c "import importlib.metadata as m; m.version('nanogpt-monitor'); m.version('hypothesis')" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check -e '.[test]'
  export PYTHONUNBUFFERED=1
  exec python3 -m pytest tests/unit "$@"  # collect that folder only: the others import browsers' and clusters' clients
fi

need_apt=()
for tool in prometheus:prometheus promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
            amtool:prometheus-alertmanager chromium:chromium firefox-esr:firefox-esr docker-compose:docker-compose \
            node:nodejs npm:npm kubectl:kubernetes-client; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${need_apt[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need_apt[@]}" | sort -u) >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
npm ci --prefix tests/grafana --no-audit --no-fund --loglevel=error
# puppeteer-core drives the Debian firefox-esr above; it must never download a browser of its own
PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix tests/firefox --no-audit --no-fund --loglevel=error
npm ci --prefix tests/k8s --no-audit --no-fund --loglevel=error

export PYTHONUNBUFFERED=1
exec python3 -m pytest "$@"
