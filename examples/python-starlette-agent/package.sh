#!/usr/bin/env bash
# Builds the agent's code zip the way AgentCore's docs package Python agents: the dependencies
# installed with `pip install --target`, main.py next to them, all at the top of the zip.
#
#   bash examples/python-starlette-agent/package.sh [OUTPUT.zip]
#
# OUTPUT.zip defaults to ./python-starlette-agent.zip.
#
# PYTHON_VERSION (default 3.11) must be the runtime's: PYTHON_3_11 runs Python 3.11, and pip
# picks the wheels built for it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
output="$(realpath -m "${1:-python-starlette-agent.zip}")"
python_version="${PYTHON_VERSION:-3.11}"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT

python3 -m pip install --quiet --disable-pip-version-check --target "$build" \
  --python-version "$python_version" --only-binary=:all: -r "$here/requirements.txt"
cp "$here/main.py" "$build/"
# Bytecode that is used without comparing timestamps: a zip keeps them only to 2 seconds, and
# the code folder is read-only in a session, so stale .pyc files would be recompiled, and never
# saved, at every start. (Files for another Python version are named for it and ignored.)
python3 -m compileall -q -f --invalidation-mode unchecked-hash "$build"

mkdir -p "$(dirname "$output")"
rm -f "$output"
(cd "$build" && python3 -m zipfile -c "$output" ./*)
echo "$output"
