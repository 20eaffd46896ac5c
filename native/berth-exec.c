/*
 * berth-exec: runs commands inside running Berth sandboxes, as `docker exec` does for containers.
 * It runs commands only; mounts are berth-mount's (native/berth-mount.c).
 *
 *   berth-exec serve SOCKET [--no-seccomp]
 *   berth-exec escape [READ_SIZE]   (stdin to stdout as output text; for tests)
 *
 * Berth starts one of these as root and connects to SOCKET (root's alone) once per command; how
 * it serves is native/root-server.h.
 *
 * Frames, both ways (native/request-frames.h): [type: u8][length: u32 big-endian][payload].
 *   Berth -> here, once: 'r', the command (its entries: native/exec-request.h).
 *   here -> Berth: either 'f' with a message (the program could not start), or 's' (it started),
 *     then 'o' stdout and 'e' stderr output as it comes, each frame whole characters as the
 *     content of a JSON string (native/output-text.h), then 'x' "exit N" or "signal N".
 *
 * Per connection a keeper process (root, outside the sandbox) enters the sandbox's pid namespace
 * for its children and forks the command. The command joins the given cgroups, drops
 * supplementary groups, enters every other namespace of the sandbox at once through a pidfd,
 * takes the sandbox's root, drops the capability bounding set, becomes uid/gid N and empties its
 * capabilities before it resolves any path of the sandbox's (its working directory), then sets
 * no_new_privs and a new session, installs Berth's seccomp filter (native/seccomp-filter.h;
 * --no-seccomp leaves it out) and execs with stdin, stdout and stderr alone. The keeper relays
 * stdout and stderr as they come, writing with blocking writes: when Berth stops reading, the
 * keeper stops reading the pipes and the command blocks on a full pipe, so output never piles up
 * in memory. When the command's own process exits, what is already in the pipes is relayed, then
 * its exit; output written later by processes it left running is not.
 *
 * On a terminal (the request has tty=COLSxROWS), the command makes a pseudo-terminal inside the
 * sandbox once it is the sandbox's user without capabilities and has its new session: it opens
 * the sandbox's own /dev/ptmx (bwrap's devpts), takes the other side through the master
 * (TIOCGPTPEER, no path), sets the window size, makes it its controlling terminal and its stdin,
 * stdout and stderr, and passes the master to the keeper over a socket pair made before the fork
 * (SCM_RIGHTS), keeping no copy. The keeper takes it only if it is a terminal's master
 * (TIOCGPTN). After 's':
 *   Berth -> here: 'i' bytes typed at the terminal (at most 64 KiB a frame), 'w' "COLS ROWS" (the
 *     new window size; the kernel sends SIGWINCH). Any other frame, or a longer one, ends the
 *     connection, and with it the terminal (a hang-up).
 *   here -> Berth: 'b' what the terminal shows, raw bytes as read (stdout and stderr are one
 *     stream on a terminal), then 'x' as above once the command's own process has exited and
 *     what the terminal held by then is relayed.
 * Typed input waits in the keeper one frame at a time, and the keeper reads no more from Berth
 * until the terminal takes it (native/terminal-relay.h), so a program that does not read its
 * input holds Berth back rather than filling the keeper's memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "descriptors.h"
#include "exec-request.h"
#include "output-text.h"
#include "passed-descriptors.h"
#include "request-frames.h"
#include "root-server.h"
#include "seccomp-filter.h"
#include "terminal-relay.h"

#define CHUNK 65536

/* Whether commands run under Berth's seccomp filter: set once by `serve`, before any fork. */
static int command_seccomp = 1;

/* In the command, before exec: the reason goes to the keeper through the status pipe. */
static void die_in_child(int status_fd, const char *format, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void die_in_child(int status_fd, const char *format, ...) {
  char text[512];
  va_list args;
  va_start(args, format);
  size_t length = format_message(text, sizeof text, format, args);
  va_end(args);
  write_all(status_fd, text, length);
  _exit(127);
}

static void drop_bounding_set(int status_fd) {
  for (int cap = 0; cap < 64; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
      if (errno == EINVAL) return; /* past the kernel's last capability */
      die_in_child(status_fd, "cannot drop capability %d: %s", cap, strerror(errno));
    }
  }
}

/*
 * Empties the capability sets. The kernel does so itself only when a uid change leaves the user
 * namespace's own uid 0, and host root, which the command was, is not that uid: without this the
 * command would hold every capability in the sandbox until exec.
 */
static void drop_capabilities(int status_fd) {
  struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3};
  struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = {{0}};
  if (syscall(SYS_capset, &header, none) < 0 ||
      prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
    die_in_child(status_fd, "cannot drop capabilities: %s", strerror(errno));
}

/*
 * In the command, as the sandbox's user without capabilities and leading a new session: a
 * pseudo-terminal of the sandbox's own devpts as its controlling terminal and stdio, the master
 * sent to the keeper over CHANNEL and closed here.
 */
static void take_terminal(const struct request *request, int channel, int status_fd) {
  int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
  int unlock = 0;
  if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0)
    die_in_child(status_fd, "cannot open a terminal (/dev/ptmx): %s", strerror(errno));
  int terminal = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  struct winsize size = {.ws_row = (unsigned short)request->rows,
                         .ws_col = (unsigned short)request->columns};
  if (terminal < 0 || ioctl(terminal, TIOCSWINSZ, &size) < 0 || ioctl(terminal, TIOCSCTTY, 0) < 0)
    die_in_child(status_fd, "cannot set up the terminal: %s", strerror(errno));
  if (dup2(terminal, 0) < 0 || dup2(terminal, 1) < 0 || dup2(terminal, 2) < 0)
    die_in_child(status_fd, "cannot make the terminal stdio: %s", strerror(errno));
  if (send_descriptor(channel, master) < 0)
    die_in_child(status_fd, "cannot pass the terminal on: %s", strerror(errno));
  close(terminal);
  close(master);
  close(channel);
}

/* Where the command's stdout and stderr go: pipes, or (TERMINAL_CHANNEL, else -1) a terminal it
 * makes itself, its master passed back over that socket. */
struct command_stdio {
  int out, err, terminal_channel;
};

/*
 * The command's side of the fork: never returns. From setns until drop_capabilities it holds
 * every capability in the sandbox's user namespace (joining the mount and other namespaces needs
 * them, and the pidfd joins them all at once), so in that stretch it touches no path the sandbox
 * controls: the root is a descriptor the keeper opened, the working directory and the terminal
 * come after.
 */
static void become_command(const struct request *request, int pidfd, int root,
                           struct command_stdio stdio, int status_fd) {
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int on_terminal = stdio.terminal_channel >= 0;
  /* On a terminal, /dev/null stands in until the terminal exists: the keeper's own stdout and
   * stderr (Berth's pipes) must not reach the command. */
  if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(on_terminal ? null_fd : stdio.out, 1) < 0 ||
      dup2(on_terminal ? null_fd : stdio.err, 2) < 0)
    die_in_child(status_fd, "cannot set up stdio: %s", strerror(errno));
  for (int i = 0; i < request->cgroup_count; i++) {
    int fd = open(request->cgroups[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write_all(fd, "0", 1) < 0)
      die_in_child(status_fd, "cannot join cgroup %s: %s", request->cgroups[i], strerror(errno));
    close(fd);
  }
  /* Root's supplementary groups would otherwise follow the command into the sandbox. */
  if (setgroups(0, NULL) < 0) die_in_child(status_fd, "setgroups: %s", strerror(errno));
  int namespaces = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                   CLONE_NEWCGROUP;
  if (setns(pidfd, namespaces) < 0)
    die_in_child(status_fd, "cannot enter the sandbox: %s", strerror(errno));
  if (fchdir(root) < 0 || chroot(".") < 0)
    die_in_child(status_fd, "cannot enter the sandbox's root: %s", strerror(errno));
  drop_bounding_set(status_fd);
  if (setresgid(request->gid, request->gid, request->gid) < 0 ||
      setresuid(request->uid, request->uid, request->uid) < 0)
    die_in_child(status_fd, "cannot become uid %ld: %s", request->uid, strerror(errno));
  drop_capabilities(status_fd);
  if (chdir(request->cwd) < 0)
    die_in_child(status_fd, "cannot change to %s: %s", request->cwd, strerror(errno));
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    die_in_child(status_fd, "no_new_privs: %s", strerror(errno));
  if (setsid() < 0) die_in_child(status_fd, "setsid: %s", strerror(errno));
  if (on_terminal) take_terminal(request, stdio.terminal_channel, status_fd);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  for (int signal_number = 1; signal_number < NSIG; signal_number++) signal(signal_number, SIG_DFL);
  /* The status pipe stays open until exec succeeds; nothing else of the keeper's crosses it. */
  if (close_descriptors_on_exec() < 0)
    die_in_child(status_fd, "cannot close the helper's descriptors: %s", strerror(errno));
  if (command_seccomp && install_seccomp_filter() < 0)
    die_in_child(status_fd, "cannot install the seccomp filter: %s", strerror(errno));
  execve(request->argv[0], request->argv, request->env);
  die_in_child(status_fd, "cannot run %s: %s", request->argv[0], strerror(errno));
}

enum relayed { BERTH_GONE = -1, END_OF_FILE = 0, RELAYED = 1, NOTHING_YET = 2 };

/* One of the command's output pipes and what turns its bytes into output text frames. */
struct output_pipe {
  int fd;
  char type; /* the frame type: 'o' or 'e' */
  int open;
  struct output_text text;
};

/* Reading and framing room, shared by both pipes: a frame header, then escaped text. */
struct relay_buffers {
  unsigned char input[OUTPUT_TEXT_CARRY + CHUNK];
  char frame[FRAME_HEADER + OUTPUT_TEXT_EXPANSION * (OUTPUT_TEXT_CARRY + CHUNK)];
};

/* Escapes LENGTH bytes read into the buffers' input and sends them as one frame, header and
 * text in one write. */
static int send_text_frame(int socket_fd, struct output_pipe *source, struct relay_buffers *buffers,
                           size_t length, int final) {
  size_t text_length = output_text_escape(&source->text, buffers->input + OUTPUT_TEXT_CARRY, length,
                                          final, buffers->frame + FRAME_HEADER);
  if (text_length == 0) return 0;
  frame_header((unsigned char *)buffers->frame, source->type, (uint32_t)text_length);
  return write_all(socket_fd, buffers->frame, FRAME_HEADER + text_length);
}

/* Relays one read's worth of a pipe; at its end, also what was held back. */
static enum relayed relay(int socket_fd, struct output_pipe *source, struct relay_buffers *buffers) {
  for (;;) {
    ssize_t got = read(source->fd, buffers->input + OUTPUT_TEXT_CARRY, CHUNK);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && errno == EAGAIN) return NOTHING_YET;
    int end = got <= 0;
    if (send_text_frame(socket_fd, source, buffers, end ? 0 : (size_t)got, end) < 0) return BERTH_GONE;
    if (end) source->open = 0;
    return end ? END_OF_FILE : RELAYED;
  }
}


/*
 * The sandbox of TARGET, held so that its pid cannot be reused under us: a pidfd, and the
 * descriptor of its root. Enters its pid namespace (for the command, a later child). 0, or -1
 * after telling Berth why.
 */
static int hold_sandbox(int socket_fd, long target, int *pidfd, int *root) {
  *pidfd = (int)syscall(SYS_pidfd_open, (pid_t)target, 0);
  if (*pidfd < 0) return send_text(socket_fd, 'f', "the sandbox is gone"), -1;
  char root_path[64];
  snprintf(root_path, sizeof root_path, "/proc/%ld/root", target);
  *root = open(root_path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  /* Still alive after its root was opened: the pid was not reused in between. */
  if (*root < 0 || syscall(SYS_pidfd_send_signal, *pidfd, 0, NULL, 0) < 0)
    return send_text(socket_fd, 'f', "the sandbox is gone"), -1;
  /* Entering a pid namespace places only later children in it: the command. */
  if (setns(*pidfd, CLONE_NEWPID) < 0)
    return send_text(socket_fd, 'f', "cannot enter the sandbox's pid namespace: %s",
                     strerror(errno)),
           -1;
  return 0;
}

/*
 * Forks the command with STDIO, closing the command's ends of it here. Its pid once it has
 * exec'd, or -1 after telling Berth why it could not start.
 */
static pid_t fork_command(int socket_fd, const struct request *request, int pidfd, int root,
                          struct command_stdio stdio) {
  int status[2] = {-1, -1};
  pid_t child = -1;
  if (pipe2(status, O_CLOEXEC) < 0) send_text(socket_fd, 'f', "pipe: %s", strerror(errno));
  else if ((child = fork()) < 0) send_text(socket_fd, 'f', "fork: %s", strerror(errno));
  else if (child == 0) {
    close(socket_fd);
    become_command(request, pidfd, root, stdio, status[1]);
  }
  int command_ends[] = {stdio.out, stdio.err, stdio.terminal_channel, status[1]};
  for (size_t i = 0; i < sizeof command_ends / sizeof command_ends[0]; i++) {
    if (command_ends[i] >= 0) close(command_ends[i]);
  }
  if (child < 0) return -1;
  char reason[512];
  ssize_t reason_length = read(status[0], reason, sizeof reason - 1);
  close(status[0]);
  if (reason_length > 0) {
    waitpid(child, NULL, 0);
    send_frame(socket_fd, 'f', reason, (uint32_t)reason_length);
    return -1;
  }
  return child;
}

/*
 * Forks the command with its stdout and stderr on pipes (their read ends in PIPES). Its pid once
 * it has exec'd, or -1 after telling Berth why it could not start.
 */
static pid_t start_command(int socket_fd, const struct request *request, int pidfd, int root,
                           struct output_pipe pipes[2]) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
    return send_text(socket_fd, 'f', "pipe: %s", strerror(errno)), -1;
  struct command_stdio stdio = {.out = out[1], .err = err[1], .terminal_channel = -1};
  pid_t child = fork_command(socket_fd, request, pidfd, root, stdio);
  if (child < 0) return -1;
  pipes[0] = (struct output_pipe){.fd = out[0], .type = 'o', .open = 1};
  pipes[1] = (struct output_pipe){.fd = err[0], .type = 'e', .open = 1};
  return child;
}

/* The terminal's master the command passed over CHANNEL before it exec'd, non-blocking; -1
 * unless it is one. */
static int receive_terminal(int channel) {
  int master = receive_descriptor(channel);
  unsigned int number;
  if (master < 0) return -1;
  if (ioctl(master, TIOCGPTN, &number) < 0 || fcntl(master, F_SETFL, O_NONBLOCK) < 0) {
    close(master);
    return -1;
  }
  return master;
}

/*
 * Forks the command on a terminal it makes inside the sandbox. Its pid once it has exec'd, with
 * the terminal's master in *MASTER, or -1 after telling Berth why it could not start.
 */
static pid_t start_on_terminal(int socket_fd, const struct request *request, int pidfd, int root,
                               int *master) {
  int channel[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, channel) < 0)
    return send_text(socket_fd, 'f', "socketpair: %s", strerror(errno)), -1;
  struct command_stdio stdio = {.out = -1, .err = -1, .terminal_channel = channel[1]};
  pid_t child = fork_command(socket_fd, request, pidfd, root, stdio);
  if (child < 0) return -1;
  *master = receive_terminal(channel[0]);
  close(channel[0]);
  if (*master < 0) {
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return send_text(socket_fd, 'f', "the command passed back no terminal"), -1;
  }
  return child;
}

/* Relays the command's output until its own process exits, then what is already in the pipes.
 * 0, or -1 when Berth is gone. */
static int relay_output(int socket_fd, pid_t child, struct output_pipe pipes[2]) {
  int child_fd = (int)syscall(SYS_pidfd_open, child, 0);
  fcntl(pipes[0].fd, F_SETFL, O_NONBLOCK);
  fcntl(pipes[1].fd, F_SETFL, O_NONBLOCK);
  struct relay_buffers *buffers = malloc(sizeof *buffers);
  if (buffers == NULL || child_fd < 0) return send_text(socket_fd, 'f', "out of resources"), -1;
  int exited = 0;
  while ((pipes[0].open || pipes[1].open) && !exited) {
    struct pollfd fds[3] = {
        {pipes[0].open ? pipes[0].fd : -1, POLLIN, 0},
        {pipes[1].open ? pipes[1].fd : -1, POLLIN, 0},
        {child_fd, POLLIN, 0},
    };
    if (poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; i++) {
      if (fds[i].revents != 0 && relay(socket_fd, &pipes[i], buffers) == BERTH_GONE) return -1;
    }
    if (fds[2].revents != 0) exited = 1;
  }
  /* The command's process has exited: relay what is already written, not what comes later. */
  for (int progress = 1; progress;) {
    progress = 0;
    for (int i = 0; i < 2; i++) {
      if (!pipes[i].open) continue;
      enum relayed result = relay(socket_fd, &pipes[i], buffers);
      if (result == BERTH_GONE) return -1;
      if (result == RELAYED) progress = 1;
    }
  }
  /* Pipes processes it left running still hold: what they cut short is final now. */
  for (int i = 0; i < 2; i++) {
    if (pipes[i].open && send_text_frame(socket_fd, &pipes[i], buffers, 0, 1) < 0) return -1;
  }
  return 0;
}

/* Relays between Berth and the command's terminal until the command's own process exits.
 * 0, or -1 when the connection is to be closed. */
static int relay_terminal_output(int socket_fd, pid_t child, int master) {
  int child_fd = (int)syscall(SYS_pidfd_open, child, 0);
  struct terminal_relay *relay = malloc(sizeof *relay);
  if (relay == NULL || child_fd < 0) return send_text(socket_fd, 'f', "out of resources"), -1;
  relay->socket_fd = socket_fd;
  relay->master = master;
  relay->child_fd = child_fd;
  relay->master_open = 1;
  forget_frame(&relay->frame);
  return relay_terminal_session(relay);
}

/* Sends the command's exit, once it is reaped. */
static void send_exit(int socket_fd, pid_t child) {
  int wait_status = 0;
  while (waitpid(child, &wait_status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(wait_status)) send_text(socket_fd, 'x', "signal %d", WTERMSIG(wait_status));
  else send_text(socket_fd, 'x', "exit %d", WEXITSTATUS(wait_status));
}

/* One connection: one command, from its request to its exit. */
static void keep(int socket_fd, void *context) {
  (void)context;
  struct problem problem;
  char *payload;
  uint32_t length;
  if (read_request(socket_fd, EXEC_REQUEST_TYPE, MAX_EXEC_REQUEST, &payload, &length, &problem) < 0)
    return send_text(socket_fd, 'f', "%s", problem.text);
  struct request request;
  if (parse_request(payload, length, &request, &problem) < 0)
    return send_text(socket_fd, 'f', "%s", problem.text);
  int pidfd, root;
  if (hold_sandbox(socket_fd, request.target, &pidfd, &root) < 0) return;
  if (request.columns != 0) {
    int master;
    pid_t child = start_on_terminal(socket_fd, &request, pidfd, root, &master);
    if (child < 0 || send_frame(socket_fd, 's', "", 0) < 0) return;
    if (relay_terminal_output(socket_fd, child, master) < 0) return;
    return send_exit(socket_fd, child);
  }
  struct output_pipe pipes[2];
  pid_t child = start_command(socket_fd, &request, pidfd, root, pipes);
  if (child < 0 || send_frame(socket_fd, 's', "", 0) < 0) return;
  if (relay_output(socket_fd, child, pipes) < 0) return;
  send_exit(socket_fd, child);
}

/* escape: stdin to stdout as output text, reading at most READ_SIZE bytes at a time, so tests
 * can cut characters wherever they like. */
static int escape_stdin(long read_size) {
  static struct relay_buffers buffers;
  struct output_text text = {0};
  if (read_size < 1 || read_size > CHUNK) read_size = CHUNK;
  for (;;) {
    ssize_t got = read(0, buffers.input + OUTPUT_TEXT_CARRY, (size_t)read_size);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return 1;
    size_t length = output_text_escape(&text, buffers.input + OUTPUT_TEXT_CARRY, (size_t)got,
                                       got == 0, buffers.frame);
    if (write_all(1, buffers.frame, length) < 0) return 1;
    if (got == 0) return 0;
  }
}

int main(int argc, char **argv) {
  if (argc >= 2 && argc <= 3 && strcmp(argv[1], "escape") == 0)
    return escape_stdin(argc == 3 ? atol(argv[2]) : CHUNK);
  if (argc == 4 && strcmp(argv[3], "--no-seccomp") == 0) command_seccomp = 0;
  if (argc != (command_seccomp ? 3 : 4) || strcmp(argv[1], "serve") != 0) {
    fprintf(stderr, "usage: berth-exec serve SOCKET [--no-seccomp] | berth-exec escape [READ_SIZE]\n");
    return 2;
  }
  if (become_root_server("berth-exec") < 0) return 2;
  return serve_connections("berth-exec", argv[2], keep, NULL);
}
