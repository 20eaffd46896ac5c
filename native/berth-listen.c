/*
 * berth-listen SOCKET FD COMMAND [ARG...]
 *
 * Run by Berth as root just before a sandbox starts: listens on the Unix socket SOCKET, puts the
 * listening descriptor at FD (inheritable), then becomes COMMAND (setpriv, then bwrap, then
 * berth-bridge inside the sandbox, which accepts on FD). SOCKET lies in a folder only root can
 * reach, so the path Berth connects to as root is one no sandbox can replace: a sandbox that
 * owned the socket's folder could swap the socket for a link to another session's agent.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "unix-socket.h"

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: berth-listen SOCKET FD COMMAND [ARG...]\n");
    return 125;
  }
  int target = atoi(argv[2]);
  if (target <= 2) {
    fprintf(stderr, "berth-listen: FD must be above 2 (got %s)\n", argv[2]);
    return 125;
  }
  umask(0077); /* the socket is root's alone; Berth is its only client */
  int listener = listen_unix(argv[1], 128);
  if (listener < 0) {
    fprintf(stderr, "berth-listen: cannot listen on %s: %s\n", argv[1], strerror(errno));
    return 125;
  }
  /* The one descriptor meant to cross into the sandbox: inheritable (dup2 clears close-on-exec
   * on its copy; a socket that landed on FD itself keeps the flag listen_unix set). */
  int moved = listener == target ? fcntl(target, F_SETFD, 0)
                                 : (dup2(listener, target) < 0 ? -1 : close(listener));
  if (moved < 0) {
    fprintf(stderr, "berth-listen: cannot move the socket to fd %d: %s\n", target, strerror(errno));
    return 125;
  }
  execvp(argv[3], argv + 3);
  fprintf(stderr, "berth-listen: cannot run %s: %s\n", argv[3], strerror(errno));
  return 127;
}
