#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then run them all.
#   bash scripts/test.sh [pytest args...]
# Needs root (or sudo) for apt-get; Python packages go to the current Python.
set -euo pipefail
cd "$(dirname "$0")/.."

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
