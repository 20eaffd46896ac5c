#!/usr/bin/env bash
# Builds Berth's native helpers into native/bin (see the comment at the top of each source):
# berth-exec, the root server that runs commands inside sandboxes, berth-mount, the root server
# that makes sessions' mounts (confined to Berth's data directory), berth-listen, which makes each
# sandbox's agent socket in a root-only folder, berth-snapshot, which clones session volumes'
# images and maps their blocks for checkpoints, and berth-bridge, the static first program of
# every sandbox. Each is rebuilt only when its sources are newer than the binary. (native/
# parser-fuzz.c is not built here: test/native-parser.test.ts builds it with the sanitizers.)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p native/bin
build() {
  local name=$1
  shift
  # Built when missing, or older than its source or any shared header.
  if [ ! -x "native/bin/$name" ] ||
    [ -n "$(find "native/$name.c" native/*.h -newer "native/bin/$name" | head -1)" ]; then
    cc -O2 -Wall -Wextra -Werror "$@" -o "native/bin/$name.tmp" "native/$name.c"
    mv "native/bin/$name.tmp" "native/bin/$name"
  fi
}
build berth-exec
build berth-mount
build berth-listen
build berth-snapshot
# Static: it runs inside container images, whatever libc they have, if any.
build berth-bridge -static
