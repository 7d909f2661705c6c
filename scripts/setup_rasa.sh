#!/usr/bin/env bash
# Create the Rasa virtualenv (.venv-rasa) with Python 3.10 and install the pinned
# nlu/requirements-rasa.txt into it.
#
# Rasa 3.6 runs only on Python 3.8-3.10 and pins old libraries, so it gets its
# own virtualenv; the app talks to it over HTTP. Idempotent: a stamp file holds
# the hash of the requirements, the constraints (every package's version), this
# script and the interpreter; a matching stamp means there is nothing to do.
# Usage: scripts/setup_rasa.sh [--force]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SCRM_RASA_VENV:-$ROOT/.venv-rasa}"
REQS="$ROOT/nlu/requirements-rasa.txt"
CONSTRAINTS="$ROOT/nlu/constraints-rasa.txt"
STAMP="$VENV/.scrm-requirements.sha256"

find_python310() {
    local candidates=()
    if [[ -n "${SCRM_PYTHON310:-}" ]]; then candidates+=("$SCRM_PYTHON310"); fi
    if command -v python3.10 >/dev/null 2>&1; then candidates+=("$(command -v python3.10)"); fi
    if command -v pyenv >/dev/null 2>&1; then
        local prefix
        prefix="$(pyenv prefix 3.10 2>/dev/null || true)"
        if [[ -n "$prefix" ]]; then candidates+=("$prefix/bin/python3.10"); fi
    fi
    candidates+=(/root/.pyenv/versions/3.10.13/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10)
    local candidate
    for candidate in "${candidates[@]}"; do
        # A pyenv shim exists on PATH even when 3.10 is not selected: run it to be sure.
        if [[ -x "$candidate" ]] && "$candidate" -c 'import sys, venv; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

PYTHON="$(find_python310)" || {
    echo "setup_rasa: Python 3.10 not found (tried python3.10, pyenv prefix 3.10, /root/.pyenv/versions/3.10.13)" >&2
    echo "setup_rasa: install Python 3.10 or set SCRM_PYTHON310=/path/to/python3.10" >&2
    exit 1
}

WANT="$( { sha256sum "$REQS" "$CONSTRAINTS" "${BASH_SOURCE[0]}" | cut -d' ' -f1; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ "${1:-}" != "--force" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/rasa" ]]; then
    echo "setup_rasa: $VENV is up to date"
    exit 0
fi

echo "setup_rasa: creating $VENV with $PYTHON (several minutes: TensorFlow is large)"
rm -f "$STAMP"
"$PYTHON" -m venv "$VENV"
# pip warns about every optional local index it cannot find; keep real errors only.
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
quiet_pip install --quiet --upgrade "pip==24.0"
quiet_pip install --quiet -r "$REQS" -c "$CONSTRAINTS"
# Fail here, not at the first parse, when the install is broken.
TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" -W ignore -c 'import rasa, jieba, tensorflow; print("setup_rasa: rasa", rasa.__version__)'
echo "$WANT" > "$STAMP"
echo "setup_rasa: done"
