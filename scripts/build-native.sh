#!/usr/bin/env bash
# Builds Berth's one native helper, native/bin/berth-exec (see the comment at the top of its
# source). Rebuilt only when the source is newer than the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p native/bin
if [ ! -x native/bin/berth-exec ] || [ native/berth-exec.c -nt native/bin/berth-exec ]; then
  cc -O2 -Wall -Wextra -Werror -o native/bin/berth-exec.tmp native/berth-exec.c
  mv native/bin/berth-exec.tmp native/bin/berth-exec
fi
