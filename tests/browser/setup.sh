#!/usr/bin/env bash
# Installs what tests/test_browser.py needs, only when missing: Debian's Chromium (/usr/bin/chromium) and
# npm's playwright-core (into tests/browser/node_modules; it drives that Chromium, it never downloads a browser).
# Idempotent; run from anywhere. CI runs it, then sets DCTKD_REQUIRE_BROWSER=1 so the browser test cannot skip.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ ! -x /usr/bin/chromium ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"
  echo "installing Debian's chromium (apt-get) ..."
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version 2>/dev/null
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "node and npm are needed for the browser test (Debian: apt-get install -y nodejs npm)" >&2; exit 1
fi
if [ ! -f "$here/node_modules/playwright-core/package.json" ]; then
  echo "installing playwright-core into $here/node_modules (npm) ..."
  # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the browser is Debian's chromium, never a download
  # npm ci installs exactly what package-lock.json records
  (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
node -e "console.log('playwright-core', require('$here/node_modules/playwright-core/package.json').version)"
