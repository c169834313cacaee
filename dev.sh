#!/usr/bin/env bash
# Set-up, main job, tests and the packaging check in one place.
#   bash dev.sh run  [run_recbole_ext.py args]   set up .venv if needed, then train (no args: the main job,
#                                                TiMiRec both stages on ml-100k under the ReChorus protocol)
#   bash dev.sh test [pytest args]               set up .venv if needed, then run the test suite
#   bash dev.sh wheel                            build the wheel, install it into an empty venv and use it from
#                                                a folder outside the repository (what `pip install` gives a user)
#   bash dev.sh setup                            only set up
# The venv is (re)built only when pyproject.toml or SETUP_REV (bump it when the steps below change) changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${RECBOLE_EXT_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH=2.13.0
stamp="$VENV/.recbole_ext-stamp"
SETUP_REV=2
want=$( (cat pyproject.toml; echo "$SETUP_REV") | sha256sum | cut -c1-16)

pip_in() { "$1/bin/python" -m pip install --disable-pip-version-check -q "${@:2}"; }

# torch first and exactly: with no torch present, a loose requirement would pull PyPI's multi-GB CUDA build.
# With an NVIDIA GPU that build is what we want; without one, the CPU build: a local wheel where pip's configured
# find-links has one, else PyTorch's CPU index (its other requirements come from PyPI either way).
install_torch() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
     || [ "$(uname -sm)" != "Linux x86_64" ]; then  # PyTorch's +cpu builds exist for Linux x86_64 only
    pip_in "$1" "torch==$TORCH"
  elif pip_in "$1" --no-index --no-deps "torch==$TORCH+cpu" 2>/dev/null; then
    pip_in "$1" "torch==$TORCH+cpu"
  else
    pip_in "$1" "torch==$TORCH+cpu" --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
}

# $1: venv, $2: what to install for recbole_ext (the source tree, editable, or a wheel)
install_stack() {
  [ -x "$1/bin/python" ] || "$PY" -m venv "$1"
  install_torch "$1"
  # recbole's wheel pins ray<=2.6.3 (broken on numpy 2 / Python 3.12); its real requirements are in pyproject.toml
  pip_in "$1" --no-deps "recbole==1.2.1"
  pip_in "$1" "${@:2}"
}

setup() {
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  echo "[dev.sh] setting up $VENV (once; a few minutes)" >&2
  install_stack "$VENV" -e ".[test]"
  echo "$want" > "$stamp"
}

# The wheel as a user gets it: built from this tree, installed into an empty venv (pip's cache serves what the
# test venv already downloaded), then used from an empty folder: list, a 1-epoch run, recommend on its checkpoint.
wheel_check() {
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT  # also when a check fails (set -e): no venv left behind
  "$PY" -m venv "$tmp/venv"  # the venv's own pip builds the wheel: the system Python may have none
  "$tmp/venv/bin/python" -m pip wheel --disable-pip-version-check -q --no-deps . -w "$tmp/dist"
  install_stack "$tmp/venv" "$tmp"/dist/recbole_ext-*.whl
  mkdir "$tmp/work"
  (
    cd "$tmp/work"
    "$tmp/venv/bin/python" -c "import recbole_ext, sys; assert 'site-packages' in recbole_ext.__file__, recbole_ext.__file__"
    "$tmp/venv/bin/recbole-ext" --list | head -3
    "$tmp/venv/bin/recbole-ext" --model=ComiRec --dataset=ml-100k --epochs=1 --show_progress=False >run.log 2>&1 \
      || { tail -20 run.log; exit 1; }
    tail -3 run.log
    ckpt=$(sed -n 's/^checkpoint: //p' run.log)
    "$tmp/venv/bin/recbole-ext" recommend --checkpoint="$ckpt" --users=196,186 --k=3 --exclude_history
  )
  echo "[dev.sh] wheel OK: $(basename "$tmp"/dist/*.whl) installed and used outside the repository"
}

cmd=${1:-run}; shift || true
case "$cmd" in
  setup) setup ;;
  run)   setup
         # main job, a few minutes on 2 cores: 5 epochs per stage, lr 1e-3 (reference 1e-4) and a history window of
         # 10 (reference 20); it ends with the test of both stages: the finetune stage beats the pretrained extractor
         [ $# -gt 0 ] || set -- --model=TiMiRec --dataset=ml-100k --protocol=rechorus --learning_rate=0.001 \
           --MAX_ITEM_LIST_LENGTH=10 --epochs=5
         exec "$VENV/bin/python" run_recbole_ext.py "$@" ;;
  test)  setup
         set +e; "$VENV/bin/python" -m pytest -q "$@"; rc=$?; set -e
         # pytest's 5 = "no tests collected": with a filter that matched nothing it is not a failure
         [ "$rc" -eq 5 ] && rc=0
         exit "$rc" ;;
  wheel) wheel_check ;;
  *) echo "usage: bash dev.sh [setup|run|test|wheel] [args...]" >&2; exit 2 ;;
esac
