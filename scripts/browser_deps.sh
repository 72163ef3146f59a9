#!/usr/bin/env bash
# What the browser test needs: Debian's Chromium (never a browser download at run time)
# and playwright-core from the npm registry, pinned by tools/browser/package-lock.json.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[browser-deps] installing Debian chromium"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[browser-deps] chromium missing and cannot apt-get install it here: the browser test will skip"
  fi
fi
lock="$here/tools/browser/package-lock.json"
stamp="$here/tools/browser/node_modules/.saemnesia-lock"
if command -v npm >/dev/null 2>&1; then
  if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
    echo "[browser-deps] npm ci (playwright-core)"
    npm ci --prefix "$here/tools/browser" --no-audit --no-fund --loglevel=error
    cp "$lock" "$stamp"
  fi
else
  echo "[browser-deps] npm missing: the browser test will skip"
fi
