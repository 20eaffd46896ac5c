/*
 * What Berth's two root servers (berth-exec, berth-mount) share: how they start and how they
 * serve. Each listens on a Unix socket only root can use, forks a process per connection (a
 * tenth of a millisecond, where Node forking itself and exec'ing a helper costs several), and
 * exits when its stdin (a pipe Berth holds) closes, so it never outlives Berth.
 */
#ifndef BERTH_ROOT_SERVER_H
#define BERTH_ROOT_SERVER_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "descriptors.h"
#include "request-frames.h"
#include "unix-socket.h"

/* Refuses to run as anyone but root, dies with Berth, and drops every descriptor it inherited
 * (Berth's, and what Berth inherited): none of them is the server's, nor its children's.
 * 0, or -1 after saying why on stderr. */
static inline int become_root_server(const char *name) {
  if (geteuid() != 0) {
    fprintf(stderr, "%s: must run as root\n", name);
    return -1;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (close_descriptors_except(NULL, 0) < 0) {
    fprintf(stderr, "%s: cannot close inherited descriptors: %s\n", name, strerror(errno));
    return -1;
  }
  return 0;
}

/* Handles one connection, in a process of its own that exits afterwards. */
typedef void (*connection_handler)(int connection, void *context);

/* Forks the process for one connection. Its fd 0 is /dev/null rather than Berth's pipe, but still
 * taken: a command's set-up dup2()s onto 0-2. */
static inline void fork_handler(int listener, int connection, connection_handler handle,
                                void *context) {
  pid_t child = fork();
  if (child == 0) {
    signal(SIGCHLD, SIG_DFL);
    close(listener);
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0 || dup3(null_fd, 0, O_CLOEXEC) < 0) _exit(1);
    handle(connection, context);
    _exit(0);
  }
  close(connection);
}

/* Listens on SOCKET_PATH (mode 0600: root's alone), writes "ready\n" to stdout, then serves
 * until stdin closes; returns the process's exit status. */
static inline int serve_connections(const char *name, const char *socket_path,
                                    connection_handler handle, void *context) {
  mode_t previous = umask(077);
  int listener = listen_unix(socket_path, 256);
  umask(previous);
  if (listener < 0) {
    fprintf(stderr, "%s: cannot listen on %s: %s\n", name, socket_path, strerror(errno));
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGCHLD, SIG_IGN); /* connection processes are reaped by the kernel */
  if (write_all(1, "ready\n", 6) < 0) return 1;
  for (;;) {
    struct pollfd fds[2] = {{listener, POLLIN, 0}, {0, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (fds[1].revents != 0) {
      unlink(socket_path);
      return 0; /* stdin closed: Berth is gone */
    }
    if (fds[0].revents == 0) continue;
    int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (connection >= 0) fork_handler(listener, connection, handle, context);
  }
}

#endif
