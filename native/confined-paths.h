/*
 * Paths berth-mount acts on, resolved so that root never follows one a sandbox can change.
 *
 * Each path of a request is resolved once, with openat2 from the descriptor of the confining
 * folder (opened when berth-mount starts): RESOLVE_BENEATH refuses anything that would leave the
 * folder ('..' past it, an absolute link), RESOLVE_NO_SYMLINKS refuses any symbolic link on the
 * way (a sandbox that owns a folder inside can make one point anywhere, even somewhere inside).
 * What the operation then touches is that descriptor, through /proc/self/fd/N or a *at() call,
 * never the text again: renaming a folder afterwards changes nothing.
 */
#ifndef BERTH_CONFINED_PATHS_H
#define BERTH_CONFINED_PATHS_H

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>

#include "mount-request.h"

/* Opens PATH beneath CONFINED_FD (flags: O_PATH | O_DIRECTORY for a folder, O_RDWR for an image);
 * the descriptor, or -1 with PROBLEM filled in. */
static inline int open_confined(int confined_fd, const char *key,
                                const struct confined_path *path, int flags,
                                struct problem *problem) {
  struct open_how how = {
      .flags = (uint64_t)(flags | O_CLOEXEC),
      .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
  };
  int fd = (int)syscall(SYS_openat2, confined_fd, path->beneath, &how, sizeof how);
  if (fd >= 0) return fd;
  if (errno == ELOOP)
    return refuse(problem,
                  "%s %.256s is reached through a symbolic link, which root does not follow", key,
                  path->given);
  if (errno == EXDEV)
    return refuse(problem, "%s %.256s leads outside the folder mounts are confined to", key,
                  path->given);
  return refuse(problem, "%s %.256s: %s", key, path->given, strerror(errno));
}

/* The name under which the kernel reaches what FD refers to, for calls that take only a path. */
struct fd_path {
  char text[32];
};

static inline struct fd_path fd_path(int fd) {
  struct fd_path path;
  snprintf(path.text, sizeof path.text, "/proc/self/fd/%d", fd);
  return path;
}

#endif
