#!/usr/bin/env bash
# What the browser test needs: Debian's Chromium (never a browser download at run time)
# and playwright-core from the npm registry, pinned by tools/browser/package-lock.json; and the
# newer ComfyUI frontend the test also runs against (tools/browser/newer-frontend.txt), from PyPI
# into .cache/frontends/<version>/, so the venv keeps the frontend ComfyUI pins.
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

pin="$(grep -E '^comfyui-frontend-package==' "$here/tools/browser/newer-frontend.txt")"
target="$here/.cache/frontends/${pin#*==}"
py="${SAEMNESIA_VENV:-$here/.venv}/bin/python"
if [ ! -f "$target/comfyui_frontend_package/static/index.html" ]; then
  if [ -x "$py" ]; then
    echo "[browser-deps] pip install --target $target $pin"
    rm -rf "$target.partial"
    "$py" -m pip install -q --no-deps --target "$target.partial" "$pin"
    rm -rf "$target"
    mv "$target.partial" "$target"
  else
    echo "[browser-deps] no venv at ${py%/bin/python} (make setup): the newer frontend's browser tests will skip"
  fi
fi
