#!/usr/bin/env bash
# The single install entry point of box_panoptic (called by `make install` and `.ci/run`).
#
# On a fresh machine it creates $VENV (default .venv) and installs, in this order:
#   1. pip tooling with setuptools<82 (detectron2 0.6's model_zoo needs pkg_resources);
#   2. torch / torchvision (pinned, see ../shared/spec/INSTALL_NOTES.md);
#   3. requirements.txt and requirements-dev.txt; panopticapi-lite with --no-deps;
#   4. detectron2 0.6: used as is when already importable (an official build with its compiled
#      `_C`), otherwise built pure-Python from PyPI's `pb1-detectron2==0.6` sdist with its
#      C++ extension removed and its model-zoo configs moved to where setup.py packages them;
#   5. box_panoptic itself, editable.
# It is idempotent: a stamp in $VENV records a hash of the inputs; a second run that finds the
# stamp current and the imports working exits in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3}"
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
D2_SDIST="pb1-detectron2==0.6"
D2_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
STAMP="$VENV/.box_panoptic_install_stamp"

log() { printf '[install] %s\n' "$*"; }

inputs_hash() {
  cat "$ROOT/tools/install.sh" "$ROOT/tools/fetch_sdist.py" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" \
    "$ROOT/setup.py" | sha256sum | cut -d' ' -f1
}

PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(inputs_hash)" ]] \
  && "$PY" -c "import box_panoptic, detectron2, panopticapi, torch" >/dev/null 2>&1; then
  log "everything in place ($VENV); nothing to do"
  exit 0
fi

if [[ ! -x "$PY" ]]; then
  log "creating virtual environment $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi

log "pip tooling"
"${PIP[@]}" install -q --upgrade pip "setuptools<82" wheel

if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  log "installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "${PIP[@]}" install -q $TORCH_SPEC
fi

log "installing requirements"
"${PIP[@]}" install -q -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt"
# panopticapi-lite's metadata asks numpy<2, its code works with numpy 2.
"${PIP[@]}" install -q --no-deps panopticapi-lite==0.2.0

if "$PY" -c "import detectron2" >/dev/null 2>&1; then
  log "detectron2 already importable: $("$PY" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
else
  log "building detectron2 0.6 (pure Python) from the $D2_SDIST sdist"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # `pip download` refuses this sdist (a direct-URL extra in its metadata): fetch it by name from
  # pip's configured index instead, checking the pinned sha256.
  "$PY" "$ROOT/tools/fetch_sdist.py" pb1-detectron2 pb1-detectron2-0.6.tar.gz "$D2_SHA256" "$work" >/dev/null
  tar -xzf "$work"/*.tar.gz -C "$work"
  src="$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
  "$PY" - "$src" <<'PYEOF'
import pathlib, re, shutil, sys
src = pathlib.Path(sys.argv[1])
setup = src / "setup.py"
text = setup.read_text()
new, n = re.subn(r"ext_modules\s*=\s*get_extensions\(\)", "ext_modules=[]", text)
if n != 1:
    sys.exit(f"install.sh: could not find ext_modules=get_extensions() in {setup}")
setup.write_text(new)
zoo = src / "detectron2" / "model_zoo" / "configs"
if zoo.is_dir() and not (src / "configs").exists():
    shutil.move(str(zoo), str(src / "configs"))
PYEOF
  "${PIP[@]}" install -q --no-deps --no-build-isolation "$src"
  rm -rf "$work"
  trap - EXIT
fi

log "installing box_panoptic (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

"$PY" -c "import box_panoptic, detectron2; print('[install] ok: detectron2', detectron2.__version__)"
inputs_hash >"$STAMP"
