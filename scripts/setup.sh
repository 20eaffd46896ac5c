#!/usr/bin/env bash
# Sets up a fresh Debian machine for Berth: the Debian packages its sandboxes use, then Node 24
# and every npm package (Node 24 itself comes from the npm registry, see docs/decisions/0001).
set -euo pipefail
cd "$(dirname "$0")/.."

# bubblewrap: the sandboxes; socat: the bridge to the agent's port inside a sandbox;
# unzip: .zip code artifacts; python3-minimal: PYTHON_3_* runtimes.
debian_packages=(bubblewrap socat unzip python3-minimal)
if [ ${#debian_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${debian_packages[@]}"
fi

npm ci --no-audit --no-fund
# The example agent carries its own node_modules into its sandbox, as a deployed agent would.
npm ci --no-audit --no-fund --prefix examples/node-agent
