/* Shared by Berth's native helpers. */
#ifndef BERTH_UNIX_SOCKET_H
#define BERTH_UNIX_SOCKET_H

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Listens on the Unix socket PATH, replacing a stale one; -1 with errno set on failure. The
 * socket's mode follows the caller's umask. */
static int listen_unix(const char *path, int backlog) {
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof address.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  strcpy(address.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  unlink(path);
  if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, backlog) < 0) {
    int failure = errno;
    close(fd);
    errno = failure;
    return -1;
  }
  return fd;
}

#endif
