#!/usr/bin/env bash
# Install fiun-hub into ./.venv on a fresh machine. `--test` adds the test tools.
# torch and torchvision must come as a matching pair; the pair below is the one this project's machines
# carry on local disk (pyproject.toml only declares ranges).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch, torchvision" >/dev/null 2>&1; then
  case "$(uname -m)" in
    aarch64|arm64) python -m pip install -q torch==2.9.1 torchvision==0.24.1 ;;
    *)             python -m pip install -q torch==2.14.1 torchvision==0.29.1 ;;
  esac
fi
python -m pip install -q -e ".${extras}"
# The HTML-report test renders pages in a real headless browser: Debian's Chromium.
if [ -n "$extras" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
echo "fiun-hub installed in $(pwd)/.venv"
