#!/bin/sh
# The container's first program after tini: makes room in the cgroup tree, then runs Berth.
#
# Berth puts each sandbox in a cgroup of its own under /sys/fs/cgroup/berth, with memory, pids
# and cpu limits. On cgroup v2 the container usually has a cgroup namespace of its own, so
# /sys/fs/cgroup is the container's cgroup, and this process is in it. The kernel hands
# controllers down to child cgroups only from a cgroup no process is in, so every process of the
# container moves to a leaf cgroup of its own first (berth-server: Berth, its root helpers, tini),
# leaving the container's cgroup free to hold Berth's tree. Sessions still count against the
# pod's cgroup, which holds both. With a host cgroup namespace, or on cgroup v1, nothing is moved.
set -eu

cgroup_root=/sys/fs/cgroup
if [ "$(stat -fc %T "$cgroup_root")" = cgroup2fs ] && [ "$(cat /proc/self/cgroup)" = "0::/" ]; then
  mkdir -p "$cgroup_root/berth-server"
  for pid in $(cat "$cgroup_root/cgroup.procs"); do
    # A process that exited since the list was read has nothing left to move.
    echo "$pid" > "$cgroup_root/berth-server/cgroup.procs" 2>/dev/null || [ ! -d "/proc/$pid" ]
  done
fi

exec "$@"
