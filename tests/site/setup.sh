#!/usr/bin/env bash
# Installs what tests/test_site.py needs beyond tests/browser/setup.sh: npm's `mathjax` (MathJax 3, served from the
# built site itself, so math renders offline) into tests/site/node_modules. Idempotent; run from anywhere.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/../browser/setup.sh"
if [ ! -f "$here/node_modules/mathjax/es5/tex-svg.js" ]; then
  echo "installing mathjax into $here/node_modules (npm) ..."
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi
node -e "console.log('mathjax', require('$here/node_modules/mathjax/package.json').version)"
