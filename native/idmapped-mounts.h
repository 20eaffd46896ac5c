/*
 * Idmapped mounts for berth-mount: a copy of a mount whose files' owners are mapped through a
 * user namespace, so that one owner on disk appears as whichever host uid a session's sandbox
 * has. Everything here takes and gives descriptors, never paths.
 */
#ifndef BERTH_IDMAPPED_MOUNTS_H
#define BERTH_IDMAPPED_MOUNTS_H

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mount-request.h"

/* Image files owned by ids other than the sandbox's own appear as these (host ids no process
 * ever runs as), so that every file of an image has a valid owner (overlayfs copies a file up
 * only then) while the sandbox still owns none of them. */
#define SPARE_ID_BASE 4200000000L

static inline int write_id_map(pid_t pid, const char *file, long inside, long host) {
  char path[64], map[256];
  int used = 0;
  if (inside > 0)
    used += snprintf(map + used, sizeof map - (size_t)used, "0 %ld %ld\n", SPARE_ID_BASE, inside);
  used += snprintf(map + used, sizeof map - (size_t)used, "%ld %ld 1\n", inside, host);
  if (inside + 1 < IMAGE_ID_COUNT)
    used += snprintf(map + used, sizeof map - (size_t)used, "%ld %ld %ld\n", inside + 1,
                     SPARE_ID_BASE + inside + 1, IMAGE_ID_COUNT - inside - 1);
  snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  int result = write_all(fd, map, (size_t)used);
  close(fd);
  return result;
}

/*
 * A user namespace (its fd) for idmapping an image: the image's uid/gid INSIDE is the session's
 * HOST id, every other id below 65536 a spare host id. Made by a child that unshares and waits
 * while the maps are written. -1 with PROBLEM filled in on failure.
 */
static inline int image_userns(long uid, long gid, long host, struct problem *problem) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) < 0)
    return refuse(problem, "image user namespace: %s", strerror(errno));
  pid_t child = fork();
  if (child == 0) {
    close(ready[0]);
    if (unshare(CLONE_NEWUSER) < 0) _exit(1);
    if (write(ready[1], "1", 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char byte;
  int fd = -1;
  if (child > 0 && read(ready[0], &byte, 1) == 1 &&
      write_id_map(child, "uid_map", uid, host) == 0 &&
      write_id_map(child, "gid_map", gid, host) == 0) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/user", (int)child);
    fd = open(path, O_RDONLY | O_CLOEXEC);
  }
  if (fd < 0) refuse(problem, "image user namespace: %s", strerror(errno));
  close(ready[0]);
  if (child > 0) {
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
  }
  return fd;
}

/* The user namespace of process PID (a sandbox's first process); -1 with PROBLEM filled in. */
static inline int process_userns(long pid, struct problem *problem) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%ld/ns/user", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return refuse(problem, "the user namespace of process %ld: %s", pid, strerror(errno));
  return fd;
}

/*
 * A detached copy of the mount SOURCE_FD refers to, with its ids mapped through the user
 * namespace USERNS_FD (an idmapped mount) plus ATTRIBUTES: files stored as uid/gid N appear as
 * whatever N maps to there. Returns the copy's fd, or -1 with PROBLEM filled in.
 */
static inline int idmapped_copy(int source_fd, const char *source, int userns_fd,
                                uint64_t attributes, struct problem *problem) {
  int tree = open_tree(source_fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH);
  if (tree < 0) return refuse(problem, "copying the mount at %.256s: %s", source, strerror(errno));
  struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP | attributes,
                            .userns_fd = (uint64_t)userns_fd};
  if (mount_setattr(tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
    refuse(problem, "idmapping %.256s: %s", source, strerror(errno));
    close(tree);
    return -1;
  }
  return tree;
}

/* Mounts the detached mount TREE on the folder TARGET_FD refers to; 0, or -1 with PROBLEM. */
static inline int attach_tree(int tree, int target_fd, const char *target,
                              struct problem *problem) {
  if (move_mount(tree, "", target_fd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
    return refuse(problem, "mounting on %.256s: %s", target, strerror(errno));
  return 0;
}

#endif
