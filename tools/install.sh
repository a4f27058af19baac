#!/usr/bin/env bash
# The single install entry point of box_panoptic (called by `make install` and `.ci/run`).
#
# On a fresh machine it creates $VENV (default .venv) and installs, in this order:
#   1. pip tooling with setuptools<82 (detectron2 0.6's model_zoo needs pkg_resources);
#   2. torch / torchvision (pinned, see ../shared/spec/INSTALL_NOTES.md);
#   3. requirements.txt and requirements-dev.txt; panopticapi-lite with --no-deps;
#   4. detectron2, by $DETECTRON2:
#      - "0.6" (default): used as is when already importable (an official build with its
#        compiled `_C`), otherwise built pure-Python from PyPI's `pb1-detectron2==0.6` sdist with
#        its C++ extension removed and its model-zoo configs moved to where setup.py packages them;
#      - "main": detectron2's main branch from ../shared/vendor/detectron2-main-*.tar.gz (or
#        $D2_MAIN_TARBALL), built with its C++ extension (about 5 minutes on 2 cores); use it with
#        another VENV, e.g. `DETECTRON2=main VENV=.venv-d2main bash tools/install.sh`;
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
DETECTRON2="${DETECTRON2:-0.6}"
D2_MAIN_TARBALL="${D2_MAIN_TARBALL:-$(ls "$ROOT"/../shared/vendor/detectron2-main-*.tar.gz 2>/dev/null | head -n 1)}"
STAMP="$VENV/.box_panoptic_install_stamp"

log() { printf '[install] %s\n' "$*"; }

inputs_hash() {
  { cat "$ROOT/tools/install.sh" "$ROOT/tools/fetch_sdist.py" "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" \
    "$ROOT/setup.py"; echo "detectron2=$DETECTRON2"; } | sha256sum | cut -d' ' -f1
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

if [[ "$DETECTRON2" == "main" ]]; then
  if "$PY" -c "import detectron2._C" >/dev/null 2>&1; then
    log "detectron2 (with _C) already importable: $("$PY" -c 'import detectron2; print(detectron2.__file__)')"
  else
    [[ -f "$D2_MAIN_TARBALL" ]] || { echo "install.sh: no detectron2 main tarball (set D2_MAIN_TARBALL)" >&2; exit 1; }
    log "building detectron2 main with its C++ extension from $D2_MAIN_TARBALL (about 5 minutes)"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    tar -xzf "$D2_MAIN_TARBALL" -C "$work"
    src="$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
    MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" install -q --no-deps --no-build-isolation "$src"
    rm -rf "$work"
    trap - EXIT
  fi
elif [[ "$DETECTRON2" != "0.6" ]]; then
  echo "install.sh: DETECTRON2 must be 0.6 or main, got $DETECTRON2" >&2
  exit 1
elif "$PY" -c "import detectron2" >/dev/null 2>&1; then
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
