/*
 * berth-bridge [--no-seccomp] LISTEN_FD READY_FD PORT COMMAND [ARG...]
 *
 * The first program of every sandbox. LISTEN_FD is a listening Unix socket that Berth made in a
 * folder only root can reach (see native/berth-listen.c) and handed down through bwrap: the
 * sandbox holds the socket but never its path, so it cannot replace it.
 *
 * First the bridge closes every other descriptor (bwrap passes on whatever it was given) and
 * installs Berth's seccomp filter (native/seccomp-filter.h; --no-seccomp leaves it out), which
 * then holds for everything the sandbox ever runs. It writes one byte to READY_FD and closes it
 * (the sign that bwrap has finished the sandbox's set-up), then starts two children: one relays
 * each connection on LISTEN_FD to 127.0.0.1:PORT inside the sandbox's own network namespace, so
 * Berth reaches the agent without any host port; the other becomes COMMAND (the agent).
 *
 * The bridge stays as the sandbox's init (bwrap --as-pid-1): it reaps orphans and ends with the
 * agent's status. Being pid 1 itself, rather than bwrap's init, leaves no process in the sandbox
 * outside the filter: an unfiltered one could be ptraced (or its /proc/PID/mem written) by the
 * sandbox's user, and made to run anything.
 *
 * Static, with no files of its own, so it runs the same in the host's /usr and in any container
 * image (which need not have a shell, socat or even a libc).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "descriptors.h"
#include "seccomp-filter.h"

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

/* The relays' process: accepts each connection on LISTENER and relays it in a process of its own. */
static void serve_relays(int listener, int port, pid_t bridge) {
  /* It ends with the bridge, whose pid namespace ends with it anyway. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != bridge) _exit(0);
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

/*
 * As the sandbox's init: reaps every process that ends (orphans come to pid 1) until the agent
 * does, then returns its status the way a shell reports it. When pid 1 exits, the kernel ends
 * the rest of the sandbox.
 */
static int wait_for_agent(pid_t agent) {
  for (;;) {
    int status = 0;
    pid_t ended = wait(&status);
    if (ended < 0 && errno == EINTR) continue;
    if (ended < 0) return 125;
    if (ended != agent) continue;
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
  }
}

/* Of what bwrap passed on, only LISTENER and READY stay open. */
static int keep_only(int listener, int ready) {
  int keep[2] = {listener < ready ? listener : ready, listener < ready ? ready : listener};
  return close_descriptors_except(keep, 2);
}

int main(int argc, char **argv) {
  int seccomp = 1;
  if (argc > 1 && strcmp(argv[1], "--no-seccomp") == 0) {
    seccomp = 0;
    argc--;
    argv++;
  }
  if (argc < 5) {
    fprintf(stderr, "usage: berth-bridge [--no-seccomp] LISTEN_FD READY_FD PORT COMMAND [ARG...]\n");
    return 125;
  }
  int listener = atoi(argv[1]);
  int ready = atoi(argv[2]);
  int port = atoi(argv[3]);
  int accepting = 0;
  socklen_t size = sizeof accepting;
  if (listener <= 2 || getsockopt(listener, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &size) < 0 ||
      !accepting || ready <= 2 || ready == listener || port <= 0 || port > 65535) {
    fprintf(stderr, "berth-bridge: fd %s is not a listening socket, or bad arguments\n", argv[1]);
    return 125;
  }
  if (keep_only(listener, ready) < 0) {
    fprintf(stderr, "berth-bridge: cannot close inherited descriptors: %s\n", strerror(errno));
    return 125;
  }
  if (seccomp && install_seccomp_filter() < 0) {
    fprintf(stderr, "berth-bridge: cannot install the seccomp filter: %s\n", strerror(errno));
    return 125;
  }
  if (write(ready, "1", 1) != 1) return 125;
  close(ready);
  pid_t bridge = getpid();
  pid_t relays = fork();
  if (relays < 0) return 125;
  if (relays == 0) serve_relays(listener, port, bridge);
  close(listener); /* the agent never holds it */
  pid_t agent = fork();
  if (agent < 0) return 125;
  if (agent == 0) {
    execvp(argv[4], argv + 4);
    fprintf(stderr, "berth-bridge: cannot run %s: %s\n", argv[4], strerror(errno));
    _exit(127);
  }
  return wait_for_agent(agent);
}
