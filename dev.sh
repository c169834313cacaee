#!/usr/bin/env bash
# Set-up, main job and tests in one place.
#   bash dev.sh run  [run_recbole_ext.py args]   set up .venv if needed, then train (no args: the main job,
#                                                TiMiRec both stages on ml-100k under the ReChorus protocol)
#   bash dev.sh test [pytest args]               set up .venv if needed, then run the test suite
#   bash dev.sh setup                            only set up
# The venv is (re)built only when pyproject.toml or SETUP_REV (bump it when the steps below change) changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${RECBOLE_EXT_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.recbole_ext-stamp"
SETUP_REV=1
want=$( (cat pyproject.toml; echo "$SETUP_REV") | sha256sum | cut -c1-16)

setup() {
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  echo "[dev.sh] setting up $VENV (once; a few minutes)" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
  # torch first, exactly: with no torch present, the loose requirement would pull a multi-GB CUDA build.
  "${pip[@]}" "torch==2.13.0"
  # recbole's wheel pins ray<=2.6.3 (broken here); its real requirements are in pyproject.toml instead.
  "${pip[@]}" --no-deps "recbole==1.2.1"
  "${pip[@]}" -e ".[test]"
  echo "$want" > "$stamp"
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
  *) echo "usage: bash dev.sh [setup|run|test] [args...]" >&2; exit 2 ;;
esac
