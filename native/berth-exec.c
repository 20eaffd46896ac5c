/*
 * berth-exec: runs commands inside running Berth sandboxes, as `docker exec` does for containers.
 *
 *   berth-exec serve SOCKET [--no-seccomp]
 *   berth-exec escape [READ_SIZE]   (stdin to stdout as output text; for tests)
 *
 * Berth starts one of these as root and connects to SOCKET (a root-only path) once per command.
 * Why a server rather than a program per command: forking this small process costs a tenth of
 * a millisecond, where Node forking itself and exec'ing a helper costs several. It exits when
 * its stdin (a pipe Berth holds) closes, so it never outlives Berth.
 *
 * Frames, both ways: [type: u8][length: u32 big-endian][payload].
 *   Berth -> here, once: 'm' (a mount or unmount, see handle_mount), or 'r' with NUL-terminated key=value
 *     entries: target=PID (the sandbox's first process), uid=N, gid=N, cwd=DIR,
 *     cgroup=PROCS_FILE (repeated), env=NAME=VALUE (repeated), arg=WORD (repeated; the first is
 *     an absolute program path).
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
#include <time.h>
#include <linux/capability.h>
#include <linux/loop.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "descriptors.h"
#include "output-text.h"
#include "seccomp-filter.h"
#include "unix-socket.h"

#define MAX_REQUEST (4u << 20)
#define MAX_CGROUPS 8
#define MAX_ENTRIES 4096
#define CHUNK 65536

/* Whether commands run under Berth's seccomp filter: set once by `serve`, before any fork. */
static int command_seccomp = 1;

struct request {
  long target, uid, gid;
  const char *cwd;
  const char *cgroups[MAX_CGROUPS];
  int cgroup_count;
  char *env[MAX_ENTRIES + 1];
  int env_count;
  char *argv[MAX_ENTRIES + 1];
  int argc;
};

static int write_all(int fd, const void *data, size_t length) {
  const char *cursor = data;
  while (length > 0) {
    ssize_t written = write(fd, cursor, length);
    if (written < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    cursor += written;
    length -= (size_t)written;
  }
  return 0;
}

static int read_all(int fd, void *data, size_t length) {
  char *cursor = data;
  while (length > 0) {
    ssize_t got = read(fd, cursor, length);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return -1;
    cursor += got;
    length -= (size_t)got;
  }
  return 0;
}

#define FRAME_HEADER 5

static void frame_header(unsigned char *header, char type, uint32_t length) {
  header[0] = (unsigned char)type;
  header[1] = (unsigned char)(length >> 24);
  header[2] = (unsigned char)(length >> 16);
  header[3] = (unsigned char)(length >> 8);
  header[4] = (unsigned char)length;
}

static int send_frame(int socket_fd, char type, const void *payload, uint32_t length) {
  unsigned char header[FRAME_HEADER];
  frame_header(header, type, length);
  if (write_all(socket_fd, header, sizeof header) < 0) return -1;
  return write_all(socket_fd, payload, length);
}

/* printf into a message buffer, cut to fit; returns the length. */
static size_t format_message(char *text, size_t size, const char *format, va_list args) {
  int length = vsnprintf(text, size, format, args);
  if (length < 0) return 0;
  return (size_t)length >= size ? size - 1 : (size_t)length;
}

static void send_text(int socket_fd, char type, const char *format, ...) {
  char text[512];
  va_list args;
  va_start(args, format);
  size_t length = format_message(text, sizeof text, format, args);
  va_end(args);
  send_frame(socket_fd, type, text, (uint32_t)length);
}

/* In the command, before exec: the reason goes to the keeper through the status pipe. */
static void die_in_child(int status_fd, const char *format, ...) {
  char text[512];
  va_list args;
  va_start(args, format);
  size_t length = format_message(text, sizeof text, format, args);
  va_end(args);
  write_all(status_fd, text, length);
  _exit(127);
}

static int parse_number(const char *text, long *value) {
  char *end = NULL;
  errno = 0;
  *value = strtol(text, &end, 10);
  return errno == 0 && end != text && *end == '\0' && *value >= 0 ? 0 : -1;
}

typedef const char *(*entry_handler)(const char *key, char *value, void *state);

/* Walks NUL-terminated key=value entries, splitting each in place; returns NULL or a problem. */
static const char *each_entry(char *payload, uint32_t length, entry_handler handle, void *state) {
  if (length == 0 || payload[length - 1] != '\0') return "the request is not NUL-terminated";
  for (char *entry = payload, *next; entry < payload + length; entry = next) {
    next = entry + strlen(entry) + 1;
    char *value = strchr(entry, '=');
    if (value == NULL) return "an entry has no '='";
    *value++ = '\0';
    const char *problem = handle(entry, value, state);
    if (problem != NULL) return problem;
  }
  return NULL;
}

static const char *request_entry(const char *key, char *value, void *state) {
  struct request *request = state;
  if (strcmp(key, "target") == 0) return parse_number(value, &request->target) < 0 ? "bad target" : NULL;
  if (strcmp(key, "uid") == 0) return parse_number(value, &request->uid) < 0 ? "bad uid" : NULL;
  if (strcmp(key, "gid") == 0) return parse_number(value, &request->gid) < 0 ? "bad gid" : NULL;
  if (strcmp(key, "cwd") == 0) {
    request->cwd = value;
  } else if (strcmp(key, "cgroup") == 0) {
    if (request->cgroup_count == MAX_CGROUPS) return "too many cgroups";
    request->cgroups[request->cgroup_count++] = value;
  } else if (strcmp(key, "env") == 0) {
    if (request->env_count == MAX_ENTRIES) return "too many environment variables";
    request->env[request->env_count++] = value;
  } else if (strcmp(key, "arg") == 0) {
    if (request->argc == MAX_ENTRIES) return "too many arguments";
    request->argv[request->argc++] = value;
  } else {
    return "unknown entry";
  }
  return NULL;
}

/* Parses an 'r' request in place; returns NULL or what is wrong with it. */
static const char *parse_request(char *payload, uint32_t length, struct request *request) {
  memset(request, 0, sizeof *request);
  request->target = request->uid = request->gid = -1;
  const char *problem = each_entry(payload, length, request_entry, request);
  if (problem != NULL) return problem;
  if (request->target <= 0 || request->uid < 0 || request->gid < 0 || request->cwd == NULL)
    return "target, uid, gid and cwd are required";
  if (request->argc == 0 || request->argv[0][0] != '/') return "an absolute program path is required";
  return NULL;
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
 * The command's side of the fork: never returns. From setns until drop_capabilities it holds
 * every capability in the sandbox's user namespace (joining the mount and other namespaces needs
 * them, and the pidfd joins them all at once), so in that stretch it touches no path the sandbox
 * controls: the root is a descriptor the keeper opened, the working directory comes after.
 */
static void become_command(const struct request *request, int pidfd, int root, int out, int err,
                           int status_fd) {
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
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
  setsid();
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

/* How long one attach may keep asking for a free loop device that others keep taking first. */
#define LOOP_ATTACH_TIMEOUT_MS 10000

static long monotonic_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec * 1000L + now.tv_nsec / 1000000L;
}

/*
 * Binds BACKING to the free loop device /dev/loop-control names, asking again while others take
 * the named device first; returns the device's fd. LOOP_CTL_GET_FREE names the lowest unbound
 * device, the same one to everyone asking at that moment, and LOOP_CONFIGURE binds and
 * configures it in one step: its EBUSY means another process bound that device in between, so a
 * fresh one is asked for, until the deadline rather than a fixed number of times (each loss is
 * someone else's progress).
 */
static int claim_free_loop(int control, int backing, char *device, size_t device_size) {
  long deadline = monotonic_ms() + LOOP_ATTACH_TIMEOUT_MS;
  for (;;) {
    int number = ioctl(control, LOOP_CTL_GET_FREE);
    if (number < 0) return -1;
    snprintf(device, device_size, "/dev/loop%d", number);
    int loop = open(device, O_RDWR | O_CLOEXEC);
    if (loop >= 0) {
      struct loop_config config = {.fd = (uint32_t)backing};
      config.info.lo_flags = LO_FLAGS_AUTOCLEAR;
      if (ioctl(loop, LOOP_CONFIGURE, &config) == 0) return loop;
      int failure = errno;
      close(loop);
      errno = failure;
    }
    if (errno != EBUSY || monotonic_ms() > deadline) return -1;
    /* Let whoever won the device get on with it. */
    struct timespec pause_time = {.tv_sec = 0, .tv_nsec = 1000000};
    nanosleep(&pause_time, NULL);
  }
}

/*
 * Attaches IMAGE to a free loop device that detaches itself at the last unmount; returns its fd.
 * Berth's own attaches (one keeper each) take turns under an exclusive flock of
 * /dev/loop-control, each through its own open of it: otherwise every one of them is named the
 * same free device at once and all but one lose it, round after round. Programs outside Berth
 * can still take a device first, which claim_free_loop rides out.
 */
static int attach_loop(const char *image, char *device, size_t device_size) {
  int backing = open(image, O_RDWR | O_CLOEXEC);
  if (backing < 0) return -1;
  int loop = -1;
  int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (control >= 0 && flock(control, LOCK_EX) == 0)
    loop = claim_free_loop(control, backing, device, device_size);
  int failure = errno;
  if (control >= 0) close(control); /* and with it the lock */
  close(backing);
  errno = failure;
  return loop;
}

/* image=FILE, target=DIR: mounts an ext4 image on DIR through a loop device. */
static void mount_image(int socket_fd, const char *image, const char *target) {
  char device[64];
  int loop = attach_loop(image, device, sizeof device);
  if (loop < 0) return send_text(socket_fd, 'f', "cannot attach %s to a loop device: %s", image, strerror(errno));
  int mounted = mount(device, target, "ext4", MS_NOSUID | MS_NODEV, "errors=remount-ro");
  int failure = errno;
  close(loop); /* with autoclear, the device goes when the filesystem is unmounted (or now) */
  if (mounted < 0) return send_text(socket_fd, 'f', "cannot mount %s: %s", image, strerror(failure));
  send_text(socket_fd, 'x', "exit 0");
}

/*
 * share=DIR: makes DIR a mount point of its own in a shared peer group. A sandbox whose mount
 * namespace is copied from the host's after this receives what is mounted below DIR later.
 */
static void share_mount_point(int socket_fd, const char *directory) {
  if (mount(directory, directory, NULL, MS_BIND, NULL) < 0 ||
      mount(NULL, directory, NULL, MS_SHARED, NULL) < 0)
    return send_text(socket_fd, 'f', "sharing %s: %s", directory, strerror(errno));
  send_text(socket_fd, 'x', "exit 0");
}

struct mount_request {
  const char *image, *share, *source, *target, *userns, *root, *scratch, *size, *ids, *unmount;
};

/* unmount=DIR: unmounts DIR, detaching it lazily if it is busy (a sandbox that has just died may
 * still hold it for a moment). Not mounted (EINVAL: gone with a parent detached before it) is
 * done too. Through here rather than the umount program: no process to start per mount. */
static void unmount_folder(int socket_fd, const char *directory) {
  int result = umount2(directory, UMOUNT_NOFOLLOW);
  if (result < 0 && errno == EBUSY) result = umount2(directory, MNT_DETACH | UMOUNT_NOFOLLOW);
  if (result < 0 && errno != EINVAL)
    return send_text(socket_fd, 'f', "unmounting %s: %s", directory, strerror(errno));
  send_text(socket_fd, 'x', "exit 0");
}

/* Image files owned by ids other than the sandbox's own appear as these (host ids no process
 * ever runs as), so that every file of an image has a valid owner (overlayfs copies a file up
 * only then) while the sandbox still owns none of them. */
#define SPARE_ID_BASE 4200000000L
#define IMAGE_ID_COUNT 65536L

static int write_id_map(pid_t pid, const char *file, long inside, long host) {
  char path[64], map[256];
  int used = 0;
  if (inside > 0) used += snprintf(map + used, sizeof map - (size_t)used, "0 %ld %ld\n", SPARE_ID_BASE, inside);
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
 * while the maps are written.
 */
static int image_userns(long uid, long gid, long host, char *problem, size_t problem_size) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) < 0) return -1;
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
  if (child > 0 && read(ready[0], &byte, 1) == 1 && write_id_map(child, "uid_map", uid, host) == 0 &&
      write_id_map(child, "gid_map", gid, host) == 0) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/user", (int)child);
    fd = open(path, O_RDONLY | O_CLOEXEC);
  }
  if (fd < 0) snprintf(problem, problem_size, "image user namespace: %s", strerror(errno));
  close(ready[0]);
  if (child > 0) {
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
  }
  return fd;
}

/*
 * A detached copy of the mount at SOURCE with its ids mapped through the user namespace
 * USERNS_FD (an idmapped mount) plus ATTRIBUTES: files stored as uid/gid N appear as whatever N maps
 * to there. Returns the copy's fd, or -1 with `problem` filled in.
 */
static int idmapped_copy(const char *source, int userns_fd, uint64_t attributes, char *problem,
                         size_t problem_size) {
  int tree = (int)syscall(SYS_open_tree, AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (tree < 0) {
    snprintf(problem, problem_size, "open_tree %s: %s", source, strerror(errno));
    return -1;
  }
  struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP | attributes, .userns_fd = (uint64_t)userns_fd};
  int set = (int)syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr);
  int failure = errno;
  if (set < 0) {
    snprintf(problem, problem_size, "idmapping %s: %s", source, strerror(failure));
    close(tree);
    return -1;
  }
  return tree;
}

/* Mounts the detached mount TREE on TARGET and closes it; 0, or -1 with `problem` filled in. */
static int attach_tree(int tree, const char *target, char *problem, size_t problem_size) {
  int moved = (int)syscall(SYS_move_mount, tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH);
  if (moved < 0) snprintf(problem, problem_size, "mounting on %s: %s", target, strerror(errno));
  close(tree);
  return moved;
}

/*
 * source=DIR, target=DIR, userns=FILE: an idmapped copy of DIR on TARGET. Session storage keeps
 * one fixed owner on disk this way, whichever host uid the session's sandbox gets.
 */
static void idmap_mount(int socket_fd, const char *source, const char *target, const char *userns) {
  char problem[512];
  int userns_fd = open(userns, O_RDONLY | O_CLOEXEC);
  if (userns_fd < 0) return send_text(socket_fd, 'f', "cannot open %s: %s", userns, strerror(errno));
  int tree = idmapped_copy(source, userns_fd, 0, problem, sizeof problem);
  close(userns_fd);
  if (tree < 0 || attach_tree(tree, target, problem, sizeof problem) < 0)
    return send_text(socket_fd, 'f', "%s", problem);
  send_text(socket_fd, 'x', "exit 0");
}

/*
 * root=DIR (an unpacked container image), ids=UID:GID:HOST, scratch=DIR, size=BYTES, target=DIR:
 * the root of one image sandbox. A read-only copy of DIR, idmapped so that the image's UID/GID
 * are the session's HOST id (see image_userns), is the lower layer of an overlay
 * whose upper layer lives on a tmpfs of SIZE bytes at SCRATCH; the overlay is mounted on TARGET.
 * The sandbox may change its root as it likes; the image in the cache, shared by every session,
 * stays as it was. The image's files owned by the sandbox's uid on disk are its own inside.
 */
static void image_root(int socket_fd, const struct mount_request *request) {
  char problem[512], options[256], lower[4096], upper[4096], work[4096];
  if (snprintf(options, sizeof options, "size=%s,mode=0700", request->size) >= (int)sizeof options ||
      snprintf(lower, sizeof lower, "%s/lower", request->scratch) >= (int)sizeof lower ||
      snprintf(upper, sizeof upper, "%s/upper", request->scratch) >= (int)sizeof upper ||
      snprintf(work, sizeof work, "%s/work", request->scratch) >= (int)sizeof work)
    return send_text(socket_fd, 'f', "bad request: path too long");
  if (strpbrk(request->scratch, ",:") != NULL)
    return send_text(socket_fd, 'f', "bad request: %s has ',' or ':'", request->scratch);
  if (mount("berth-scratch", request->scratch, "tmpfs", MS_NOSUID | MS_NODEV, options) < 0)
    return send_text(socket_fd, 'f', "tmpfs on %s: %s", request->scratch, strerror(errno));
  if (mkdir(lower, 0700) < 0 || mkdir(upper, 0755) < 0 || mkdir(work, 0700) < 0)
    return send_text(socket_fd, 'f', "preparing %s: %s", request->scratch, strerror(errno));
  long uid, gid, host;
  if (sscanf(request->ids, "%ld:%ld:%ld", &uid, &gid, &host) != 3 || uid < 0 || gid < 0 || host <= 0 ||
      uid >= IMAGE_ID_COUNT || gid >= IMAGE_ID_COUNT)
    return send_text(socket_fd, 'f', "bad request: ids=%s", request->ids);
  int userns_fd = image_userns(uid, gid, host, problem, sizeof problem);
  if (userns_fd < 0) return send_text(socket_fd, 'f', "%s", problem);
  int tree = idmapped_copy(request->root, userns_fd,
                           MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, problem,
                           sizeof problem);
  close(userns_fd);
  if (tree < 0 || attach_tree(tree, lower, problem, sizeof problem) < 0)
    return send_text(socket_fd, 'f', "%s", problem);
  /* The upper layer's root takes the image root's owner and mode (inside the sandbox). */
  struct stat root;
  if (stat(lower, &root) < 0 || chown(upper, root.st_uid, root.st_gid) < 0 ||
      chmod(upper, root.st_mode & 07777) < 0)
    return send_text(socket_fd, 'f', "preparing %s: %s", upper, strerror(errno));
  char overlay[3 * 4096 + 64];
  snprintf(overlay, sizeof overlay, "lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work);
  if (mount("berth-image", request->target, "overlay", MS_NOSUID | MS_NODEV, overlay) < 0)
    return send_text(socket_fd, 'f', "overlay on %s: %s", request->target, strerror(errno));
  send_text(socket_fd, 'x', "exit 0");
}

static const char *mount_entry(const char *key, char *value, void *state) {
  struct mount_request *request = state;
  if (strcmp(key, "image") == 0) request->image = value;
  else if (strcmp(key, "share") == 0) request->share = value;
  else if (strcmp(key, "source") == 0) request->source = value;
  else if (strcmp(key, "target") == 0) request->target = value;
  else if (strcmp(key, "userns") == 0) request->userns = value;
  else if (strcmp(key, "root") == 0) request->root = value;
  else if (strcmp(key, "scratch") == 0) request->scratch = value;
  else if (strcmp(key, "size") == 0) request->size = value;
  else if (strcmp(key, "ids") == 0) request->ids = value;
  else if (strcmp(key, "unmount") == 0) request->unmount = value;
  else return "unknown entry";
  return NULL;
}

/* An 'm' request: one of the mounts above, chosen by its entries. */
static void handle_mount(int socket_fd, char *payload, uint32_t length) {
  struct mount_request request = {0};
  const char *problem = each_entry(payload, length, mount_entry, &request);
  if (problem != NULL) return send_text(socket_fd, 'f', "bad request: %s", problem);
  if (request.share != NULL) return share_mount_point(socket_fd, request.share);
  if (request.unmount != NULL) return unmount_folder(socket_fd, request.unmount);
  if (request.image != NULL && request.target != NULL)
    return mount_image(socket_fd, request.image, request.target);
  if (request.source != NULL && request.target != NULL && request.userns != NULL)
    return idmap_mount(socket_fd, request.source, request.target, request.userns);
  if (request.root != NULL && request.ids != NULL && request.scratch != NULL &&
      request.size != NULL && request.target != NULL)
    return image_root(socket_fd, &request);
  send_text(socket_fd, 'f',
            "bad request: want share, unmount, image+target, source+target+userns or root+ids+scratch+size+target");
}

static void keep(int socket_fd) {
  unsigned char header[FRAME_HEADER];
  if (read_all(socket_fd, header, sizeof header) < 0) return;
  if (header[0] != 'r' && header[0] != 'm') return;
  uint32_t length = (uint32_t)header[1] << 24 | header[2] << 16 | header[3] << 8 | header[4];
  if (length > MAX_REQUEST) return send_text(socket_fd, 'f', "the request is too large");
  char *payload = malloc(length + 1);
  if (payload == NULL || read_all(socket_fd, payload, length) < 0) return;
  if (header[0] == 'm') return handle_mount(socket_fd, payload, length);
  struct request request;
  const char *problem = parse_request(payload, length, &request);
  if (problem != NULL) return send_text(socket_fd, 'f', "bad request: %s", problem);

  int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)request.target, 0);
  if (pidfd < 0) return send_text(socket_fd, 'f', "the sandbox is gone");
  char root_path[64];
  snprintf(root_path, sizeof root_path, "/proc/%ld/root", request.target);
  int root = open(root_path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  /* Still alive after its root was opened: the pid was not reused in between. */
  if (root < 0 || syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0)
    return send_text(socket_fd, 'f', "the sandbox is gone");
  /* Entering a pid namespace places only later children in it: the command. */
  if (setns(pidfd, CLONE_NEWPID) < 0)
    return send_text(socket_fd, 'f', "cannot enter the sandbox's pid namespace: %s", strerror(errno));

  int out[2], err[2], status[2];
  if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || pipe2(status, O_CLOEXEC) < 0)
    return send_text(socket_fd, 'f', "pipe: %s", strerror(errno));
  pid_t child = fork();
  if (child < 0) return send_text(socket_fd, 'f', "fork: %s", strerror(errno));
  if (child == 0) {
    close(socket_fd);
    become_command(&request, pidfd, root, out[1], err[1], status[1]);
  }
  close(out[1]);
  close(err[1]);
  close(status[1]);
  char reason[512];
  ssize_t reason_length = read(status[0], reason, sizeof reason - 1);
  if (reason_length > 0) {
    waitpid(child, NULL, 0);
    return send_frame(socket_fd, 'f', reason, (uint32_t)reason_length), (void)0;
  }

  if (send_frame(socket_fd, 's', "", 0) < 0) return;
  int child_fd = (int)syscall(SYS_pidfd_open, child, 0);
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  struct relay_buffers *buffers = malloc(sizeof *buffers);
  if (buffers == NULL || child_fd < 0) return send_text(socket_fd, 'f', "out of resources");
  struct output_pipe pipes[2] = {{.fd = out[0], .type = 'o', .open = 1},
                                 {.fd = err[0], .type = 'e', .open = 1}};
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
      if (fds[i].revents != 0 && relay(socket_fd, &pipes[i], buffers) == BERTH_GONE) return;
    }
    if (fds[2].revents != 0) exited = 1;
  }
  /* The command's process has exited: relay what is already written, not what comes later. */
  for (int progress = 1; progress;) {
    progress = 0;
    for (int i = 0; i < 2; i++) {
      if (!pipes[i].open) continue;
      enum relayed result = relay(socket_fd, &pipes[i], buffers);
      if (result == BERTH_GONE) return;
      if (result == RELAYED) progress = 1;
    }
  }
  /* Pipes processes it left running still hold: what they cut short is final now. */
  for (int i = 0; i < 2; i++) {
    if (pipes[i].open && send_text_frame(socket_fd, &pipes[i], buffers, 0, 1) < 0) return;
  }
  int wait_status = 0;
  while (waitpid(child, &wait_status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(wait_status)) send_text(socket_fd, 'x', "signal %d", WTERMSIG(wait_status));
  else send_text(socket_fd, 'x', "exit %d", WEXITSTATUS(wait_status));
}

/* The request socket: root only, since it runs anything in any sandbox. */
static int listen_on(const char *path) {
  mode_t previous = umask(077);
  int fd = listen_unix(path, 256);
  umask(previous);
  return fd;
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
  const char *socket_path = argv[2];
  if (geteuid() != 0) {
    fprintf(stderr, "berth-exec: must run as root (it enters sandboxes)\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* Whatever Berth inherited and passed on is none of the helper's, nor its commands'. */
  if (close_descriptors_except(NULL, 0) < 0) {
    fprintf(stderr, "berth-exec: cannot close inherited descriptors: %s\n", strerror(errno));
    return 1;
  }
  int listener = listen_on(socket_path);
  if (listener < 0) {
    fprintf(stderr, "berth-exec: cannot listen on %s: %s\n", socket_path, strerror(errno));
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGCHLD, SIG_IGN); /* keepers are reaped by the kernel */
  /* Tell Berth we are listening. */
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
    if (connection < 0) continue;
    pid_t keeper = fork();
    if (keeper == 0) {
      signal(SIGCHLD, SIG_DFL);
      close(listener);
      /* Not Berth's pipe any more, but keep fds 0-2 taken: the command's set-up dup2()s onto them. */
      int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (null_fd < 0 || dup3(null_fd, 0, O_CLOEXEC) < 0) _exit(1);
      keep(connection);
      _exit(0);
    }
    close(connection);
  }
}
