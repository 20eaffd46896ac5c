/*
 * berth-bridge LISTEN_FD READY_FD PORT COMMAND [ARG...]
 *
 * The first program of every sandbox. LISTEN_FD is a listening Unix socket that Berth made in a
 * folder only root can reach (see native/berth-listen.c) and handed down through bwrap: the
 * sandbox holds the socket but never its path, so it cannot replace it. The bridge writes one
 * byte to READY_FD and closes it (the sign that bwrap has finished the sandbox's set-up), then
 * forks: the parent becomes COMMAND (the agent), the child relays each connection on LISTEN_FD
 * to 127.0.0.1:PORT inside the sandbox's own network namespace, so Berth reaches the agent
 * without any host port.
 *
 * Static, with no files of its own, so it runs the same in the host's /usr and in any container
 * image (which need not have a shell, socat or even a libc).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int connect_port(int port) {
  struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Moves what `from` has to `to`; returns 0 at end of input (then half-closes `to`), -1 on error. */
static int pass_on(int from, int to, char *buffer, size_t size) {
  ssize_t got = read(from, buffer, size);
  if (got == 0) {
    shutdown(to, SHUT_WR);
    return 0;
  }
  if (got < 0) return errno == EINTR || errno == EAGAIN ? 1 : -1;
  for (ssize_t sent = 0; sent < got;) {
    ssize_t wrote = write(to, buffer + sent, (size_t)(got - sent));
    if (wrote < 0 && errno != EINTR) return -1;
    if (wrote > 0) sent += wrote;
  }
  return 1;
}

/* Relays one connection both ways until both directions have ended. */
static void relay(int client, int port) {
  int agent = connect_port(port);
  if (agent < 0) return; /* not listening yet: Berth sees the connection close and retries */
  static char buffer[65536];
  int ends[2] = {client, agent};
  struct pollfd fds[2] = {{.fd = client, .events = POLLIN}, {.fd = agent, .events = POLLIN}};
  int open_directions = 2;
  while (open_directions > 0 && poll(fds, 2, -1) >= 0) {
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      int moved = pass_on(ends[i], ends[1 - i], buffer, sizeof buffer);
      if (moved < 0) return;
      if (moved == 0) {
        fds[i].fd = -1;
        open_directions--;
      }
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: berth-bridge LISTEN_FD READY_FD PORT COMMAND [ARG...]\n");
    return 125;
  }
  int listener = atoi(argv[1]);
  int ready = atoi(argv[2]);
  int port = atoi(argv[3]);
  int accepting = 0;
  socklen_t size = sizeof accepting;
  if (listener <= 2 || getsockopt(listener, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &size) < 0 ||
      !accepting || ready <= 2 || port <= 0 || port > 65535) {
    fprintf(stderr, "berth-bridge: fd %s is not a listening socket, or bad arguments\n", argv[1]);
    return 125;
  }
  fcntl(listener, F_SETFD, FD_CLOEXEC); /* the agent never holds it */
  if (write(ready, "1", 1) != 1) return 125;
  close(ready);
  pid_t agent = getpid();
  pid_t bridge = fork();
  if (bridge < 0) return 125;
  if (bridge > 0) {
    close(listener);
    execvp(argv[4], argv + 4);
    fprintf(stderr, "berth-bridge: cannot run %s: %s\n", argv[4], strerror(errno));
    return 127;
  }
  /* The bridge ends with the agent, whose pid namespace ends with it anyway. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != agent) return 0;
  signal(SIGPIPE, SIG_IGN);
  signal(SIGCHLD, SIG_IGN); /* relays are reaped by the kernel */
  for (;;) {
    int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (client < 0) continue;
    pid_t relay_process = fork();
    if (relay_process == 0) {
      close(listener);
      relay(client, port);
      _exit(0);
    }
    close(client);
  }
}
