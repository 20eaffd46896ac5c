#!/usr/bin/env bash
# Sets up a fresh Debian machine for Berth: the Debian packages its sandboxes use, then Node 24
# and every npm package (Node 24 itself comes from the npm registry, see docs/decisions/0001).
set -euo pipefail
cd "$(dirname "$0")/.."

# bubblewrap: the sandboxes; slirp4netns + iptables: sandboxes' outbound network and its
# firewall; unzip: .zip code artifacts; python3-minimal: PYTHON_3_* runtimes; iproute2: the
# tests' own network namespaces; gcc + libc6-dev: build native/ (commands inside sandboxes,
# mounts, the agent port bridge); e2fsprogs: session storage volumes; git: the quick start and
# tests use it inside sessions; xfsprogs: the reflink pool replicated session storage lives on
# (docs/decisions/0007); zstd: the object store benchmark's tar.zst baseline. For tests of the
# object store: radosgw ceph-mon ceph-osd (a real S3 server, Ceph RGW, on loopback). For tests
# and benchmarks of container images only:
# docker-registry (a real registry on loopback), skopeo (push test images; with umoci, the
# image benchmark's baseline), busybox-static (a shell inside test images), apache2-utils
# (htpasswd for registry auth). tmux: the tests drive `berth shell` in a real terminal.
# prometheus: the metrics tests start a real Prometheus on loopback that scrapes the test Berth
# (its own service is kept off below).
debian_packages=(bubblewrap slirp4netns iptables unzip python3-minimal iproute2 gcc libc6-dev e2fsprogs git
  xfsprogs zstd radosgw ceph-mon ceph-osd postgresql docker-registry skopeo umoci busybox-static apache2-utils
  tmux prometheus)
if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
if [ ${#debian_packages[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${debian_packages[@]}"
fi
# Debian enables and starts Prometheus' own service on install (on :9090, scraping nothing of
# Berth's): the tests start theirs, so it is stopped and kept from starting at boot.
if [ -e /lib/systemd/system/prometheus.service ]; then
  $sudo systemctl disable prometheus >/dev/null 2>&1 || true
  $sudo systemctl stop prometheus >/dev/null 2>&1 || true
fi

# boto3 and the AWS CLI: the Python client tests use them (pip's; Debian's botocore is too old to
# model AgentCore). python3-minimal has no pip; Debian's python3 marks itself externally
# managed, which PIP_BREAK_SYSTEM_PACKAGES lifts for this install only.
if ! python3 -c "import boto3, awscli" 2>/dev/null; then
  python3 -m pip --version >/dev/null 2>&1 || $sudo apt-get install -y -qq --no-install-recommends python3-pip
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet boto3 awscli
fi

# slirp4netns opens /dev/net/tun as each sandbox's unprivileged uid. Creating a device still
# needs CAP_NET_ADMIN in the sandbox's own namespace, so 0666 (the kernel's usual mode) is safe.
if [ -e /dev/net/tun ]; then $sudo chmod 0666 /dev/net/tun; fi

bash scripts/build-native.sh

npm ci --no-audit --no-fund
# The example agent carries its own node_modules into its sandbox, as a deployed agent would.
npm ci --no-audit --no-fund --prefix examples/node-agent
