/*
 * berth-mount: makes and removes the mounts Berth's sessions need, confined to one folder.
 *
 *   berth-mount serve SOCKET FOLDER
 *
 * Berth starts one of these as root, FOLDER being its data directory, and connects to SOCKET
 * (root's alone) once per operation; how it serves is native/root-server.h. It runs nothing of
 * a sandbox's: commands are berth-exec's (native/berth-exec.c).
 *
 * Frames (native/request-frames.h): Berth sends one 'm' request naming its operation and exactly
 * the keys that operation takes (native/mount-request.h); the answer is one frame, 'k' (done,
 * empty) or 'f' with what was refused or failed.
 *
 * Every path lies inside FOLDER, and is resolved from FOLDER's descriptor without following any
 * symbolic link (native/confined-paths.h): session folders inside it are reached by sandboxes,
 * and root must never follow a path a sandbox can change. Each operation then works on the
 * descriptors it resolved, and closes them before it answers: a descriptor still open on a mount
 * would keep it busy.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "confined-paths.h"
#include "idmapped-mounts.h"
#include "loop-devices.h"
#include "mount-request.h"
#include "request-frames.h"
#include "root-server.h"

/* What every operation works from: the confining folder, open since the start. */
struct mount_server {
  int folder_fd;
  struct confinement confinement;
  char resolved[PATH_MAX];
};

/* Descriptors an operation opened, all closed before it answers. */
struct held_fds {
  int fds[16];
  int count;
};

/* Keeps FD (if it is one) to close later; returns it. Past the list's room, FD is closed and
 * -1 returned, so no descriptor ever stays open (one on a mount would keep it busy). No
 * operation opens nearly as many: this is a guard, not a limit anyone meets. */
static int hold(struct held_fds *held, int fd) {
  if (fd < 0) return fd;
  if (held->count >= (int)(sizeof held->fds / sizeof held->fds[0])) {
    close(fd);
    errno = EMFILE;
    return -1;
  }
  held->fds[held->count++] = fd;
  return fd;
}

static void close_held(struct held_fds *held) {
  while (held->count > 0) close(held->fds[--held->count]);
}

/* A folder of the request, opened beneath the confining folder. */
static int open_folder(const struct mount_server *server, const char *key,
                       const struct confined_path *path, struct held_fds *held,
                       struct problem *problem) {
  return hold(held, open_confined(server->folder_fd, key, path, O_PATH | O_DIRECTORY, problem));
}

/* op=loop-image: the ext4 image IMAGE on TARGET, through a loop device that detaches itself
 * at the last unmount. */
static int loop_image(const struct mount_server *server, const struct mount_request *request,
                      struct held_fds *held, struct problem *problem) {
  int image =
      hold(held, open_confined(server->folder_fd, "image", &request->image, O_RDWR, problem));
  if (image < 0) return -1;
  struct stat status;
  if (fstat(image, &status) < 0 || !S_ISREG(status.st_mode))
    return refuse(problem, "image %.256s is not a regular file", request->image.given);
  int target = open_folder(server, "target", &request->target, held, problem);
  if (target < 0) return -1;
  char device[64];
  if (hold(held, attach_loop(image, device, sizeof device)) < 0)
    return refuse(problem, "cannot attach %.256s to a loop device: %s", request->image.given,
                  strerror(errno));
  /* With autoclear, the device goes when the filesystem is unmounted, or when its descriptor
   * closes if the mount failed. */
  if (mount(device, fd_path(target).text, "ext4", MS_NOSUID | MS_NODEV, "errors=remount-ro") < 0)
    return refuse(problem, "cannot mount %.256s: %s", request->image.given, strerror(errno));
  return 0;
}

/*
 * op=share: TARGET becomes a mount point of its own (a bind of itself) in a shared peer group. A
 * sandbox whose mount namespace is copied from the host's after this receives what is mounted
 * below TARGET later.
 */
static int share(const struct mount_server *server, const struct mount_request *request,
                 struct held_fds *held, struct problem *problem) {
  int target = open_folder(server, "target", &request->target, held, problem);
  if (target < 0) return -1;
  int copy = hold(held, open_tree(target, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH));
  if (copy < 0)
    return refuse(problem, "copying %.256s: %s", request->target.given, strerror(errno));
  if (attach_tree(copy, target, request->target.given, problem) < 0) return -1;
  struct mount_attr shared = {.propagation = MS_SHARED};
  if (mount_setattr(copy, "", AT_EMPTY_PATH, &shared, sizeof shared) < 0)
    return refuse(problem, "sharing %.256s: %s", request->target.given, strerror(errno));
  return 0;
}

/*
 * op=idmap-bind: an idmapped copy of SOURCE on TARGET, through the user namespace of process
 * USERNS-PID (a sandbox's). Session storage keeps one fixed owner on disk this way, whichever
 * host uid the session's sandbox gets.
 */
static int idmap_bind(const struct mount_server *server, const struct mount_request *request,
                      struct held_fds *held, struct problem *problem) {
  int source = open_folder(server, "source", &request->source, held, problem);
  if (source < 0) return -1;
  int target = open_folder(server, "target", &request->target, held, problem);
  if (target < 0) return -1;
  int userns = hold(held, process_userns(request->userns_pid, problem));
  if (userns < 0) return -1;
  /* nosuid, nodev whatever the source's own flags: a plain-folder volume inherits the data
   * disk's, and nothing a session stores may gain privileges or reach a device. */
  int tree = hold(held, idmapped_copy(source, request->source.given, userns,
                                      MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, problem));
  if (tree < 0) return -1;
  return attach_tree(tree, target, request->target.given, problem);
}

/* A tmpfs of SIZE_BYTES, root's alone, attached on the folder SCRATCH_FD refers to; its root's
 * descriptor, or -1 with PROBLEM filled in. */
static int scratch_tmpfs(int scratch_fd, const struct mount_request *request, struct held_fds *held,
                         struct problem *problem) {
  char size[32];
  snprintf(size, sizeof size, "%ld", request->size_bytes);
  int context = hold(held, fsopen("tmpfs", FSOPEN_CLOEXEC));
  if (context < 0 || fsconfig(context, FSCONFIG_SET_STRING, "source", "berth-scratch", 0) < 0 ||
      fsconfig(context, FSCONFIG_SET_STRING, "size", size, 0) < 0 ||
      fsconfig(context, FSCONFIG_SET_STRING, "mode", "0700", 0) < 0 ||
      fsconfig(context, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
    return refuse(problem, "tmpfs for %.256s: %s", request->scratch.given, strerror(errno));
  int scratch = hold(held, fsmount(context, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV));
  if (scratch < 0)
    return refuse(problem, "tmpfs for %.256s: %s", request->scratch.given, strerror(errno));
  if (attach_tree(scratch, scratch_fd, request->scratch.given, problem) < 0) return -1;
  return scratch;
}

/* Makes the folder NAME in the folder PARENT refers to and opens it. */
static int make_folder(int parent, const char *name, mode_t mode, struct held_fds *held) {
  if (mkdirat(parent, name, mode) < 0) return -1;
  return hold(held, openat(parent, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
}

/*
 * op=image-root: the root of one image sandbox, mounted on TARGET. A read-only copy of ROOT (an
 * unpacked container image), idmapped so that the image's UID/GID are the session's HOST id (see
 * image_userns), is the lower layer of an overlay whose upper layer lives on a tmpfs of SIZE
 * bytes at SCRATCH. The sandbox may change its root as it likes; the image in the cache, shared
 * by every session, stays as it was. The image's files owned by the sandbox's uid on disk are
 * its own inside.
 */
static int image_root(const struct mount_server *server, const struct mount_request *request,
                      struct held_fds *held, struct problem *problem) {
  int root = open_folder(server, "root", &request->root, held, problem);
  int scratch_fd = root < 0 ? -1 : open_folder(server, "scratch", &request->scratch, held, problem);
  int target = scratch_fd < 0 ? -1 : open_folder(server, "target", &request->target, held, problem);
  if (target < 0) return -1;
  int scratch = scratch_tmpfs(scratch_fd, request, held, problem);
  if (scratch < 0) return -1;
  int lower = make_folder(scratch, "lower", 0700, held);
  int upper = lower < 0 ? -1 : make_folder(scratch, "upper", 0755, held);
  int work = upper < 0 ? -1 : make_folder(scratch, "work", 0700, held);
  if (work < 0)
    return refuse(problem, "preparing %.256s: %s", request->scratch.given, strerror(errno));
  int userns = hold(held, image_userns(request->uid, request->gid, request->host, problem));
  if (userns < 0) return -1;
  int tree = hold(held, idmapped_copy(root, request->root.given, userns,
                                      MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                                      problem));
  if (tree < 0 || attach_tree(tree, lower, "its lower layer", problem) < 0) return -1;
  /* The upper layer's root takes the image root's owner and mode (inside the sandbox). */
  struct stat image_root;
  if (fstat(tree, &image_root) < 0 ||
      fchownat(scratch, "upper", image_root.st_uid, image_root.st_gid, AT_SYMLINK_NOFOLLOW) < 0 ||
      fchmodat(scratch, "upper", image_root.st_mode & 07777, 0) < 0)
    return refuse(problem, "preparing %.256s/upper: %s", request->scratch.given, strerror(errno));
  char options[128];
  snprintf(options, sizeof options, "lowerdir=%s,upperdir=%s,workdir=%s", fd_path(tree).text,
           fd_path(upper).text, fd_path(work).text);
  if (mount("berth-image", fd_path(target).text, "overlay", MS_NOSUID | MS_NODEV, options) < 0)
    return refuse(problem, "overlay on %.256s: %s", request->target.given, strerror(errno));
  return 0;
}

/*
 * op=unmount: unmounts TARGET, detaching it lazily if it is busy (a sandbox that has just died
 * may still hold it for a moment). Not mounted (EINVAL: gone with a parent detached before it)
 * is done too. Only TARGET's parent is held open: an open descriptor on the mount itself would
 * keep it busy. Its last component is looked up in that parent without following a link.
 */
static int unmount_folder(const struct mount_server *server, const struct mount_request *request,
                          struct held_fds *held, struct problem *problem) {
  char parent_text[PATH_MAX];
  snprintf(parent_text, sizeof parent_text, "%s", request->target.beneath);
  size_t length = strlen(parent_text);
  while (length > 1 && parent_text[length - 1] == '/') parent_text[--length] = '\0';
  char *slash = strrchr(parent_text, '/');
  const char *name = slash == NULL ? parent_text : slash + 1;
  if (slash != NULL) *slash = '\0';
  if (strcmp(name, ".") == 0 || name[0] == '\0' || strlen(name) > NAME_MAX)
    return refuse(problem, "bad request: target %.256s names no folder", request->target.given);
  struct confined_path parent_path = {.given = request->target.given,
                                      .beneath = slash == NULL ? "." : parent_text};
  int parent = open_folder(server, "target", &parent_path, held, problem);
  if (parent < 0) return -1;
  struct stat status;
  if (fstatat(parent, name, &status, AT_SYMLINK_NOFOLLOW) < 0)
    return refuse(problem, "target %.256s: %s", request->target.given, strerror(errno));
  if (S_ISLNK(status.st_mode))
    return refuse(problem, "target %.256s is a symbolic link, which root does not follow",
                  request->target.given);
  char path[64 + NAME_MAX];
  snprintf(path, sizeof path, "%s/%s", fd_path(parent).text, name);
  int result = umount2(path, UMOUNT_NOFOLLOW);
  if (result < 0 && errno == EBUSY) result = umount2(path, MNT_DETACH | UMOUNT_NOFOLLOW);
  if (result < 0 && errno != EINVAL)
    return refuse(problem, "unmounting %.256s: %s", request->target.given, strerror(errno));
  return 0;
}

typedef int (*mount_operation)(const struct mount_server *, const struct mount_request *,
                               struct held_fds *, struct problem *);

static const mount_operation operations[MOUNT_OP_COUNT] = {
    [LOOP_IMAGE] = loop_image, [SHARE] = share,           [IDMAP_BIND] = idmap_bind,
    [IMAGE_ROOT] = image_root, [UNMOUNT] = unmount_folder,
};

/* One connection: one request, one answer. */
static void handle_connection(int socket_fd, void *context) {
  const struct mount_server *server = context;
  struct problem problem;
  char *payload;
  uint32_t length;
  struct mount_request request;
  if (read_request(socket_fd, MOUNT_REQUEST_TYPE, MAX_MOUNT_REQUEST, &payload, &length,
                   &problem) < 0 ||
      parse_mount_request(payload, length, &server->confinement, &request, &problem) < 0)
    return send_text(socket_fd, 'f', "%s", problem.text);
  struct held_fds held = {.count = 0};
  int result = operations[request.op](server, &request, &held, &problem);
  close_held(&held);
  if (result < 0)
    return send_text(socket_fd, 'f', "op=%s: %s", mount_ops[request.op].name, problem.text);
  send_frame(socket_fd, 'k', "", 0);
}

/*
 * Opens the confining folder. It must be root's and writable by no one else: another user who
 * could write in it could move what a path resolves to between two requests. 0, or -1 after
 * saying why on stderr.
 */
static int open_confinement(const char *folder, struct mount_server *server) {
  static char given[PATH_MAX];
  size_t length = strlen(folder);
  if (folder[0] != '/' || length >= sizeof given) {
    fprintf(stderr, "berth-mount: FOLDER must be an absolute path (got %s)\n", folder);
    return -1;
  }
  memcpy(given, folder, length + 1);
  while (length > 1 && given[length - 1] == '/') given[--length] = '\0';
  server->folder_fd = open(given, O_PATH | O_DIRECTORY | O_CLOEXEC);
  struct stat status;
  if (server->folder_fd < 0 || fstat(server->folder_fd, &status) < 0 ||
      realpath(given, server->resolved) == NULL) {
    fprintf(stderr, "berth-mount: cannot open %s: %s\n", given, strerror(errno));
    return -1;
  }
  if (strcmp(server->resolved, "/") == 0 || status.st_uid != 0 || (status.st_mode & 022) != 0) {
    fprintf(stderr,
            "berth-mount: %s must be a folder other than / that is root's and writable by root "
            "alone\n",
            given);
    return -1;
  }
  server->confinement = (struct confinement){.folders = {given, server->resolved}, .count = 2};
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4 || strcmp(argv[1], "serve") != 0) {
    fprintf(stderr, "usage: berth-mount serve SOCKET FOLDER\n");
    return 2;
  }
  static struct mount_server server;
  if (become_root_server("berth-mount") < 0 || open_confinement(argv[3], &server) < 0) return 2;
  return serve_connections("berth-mount", argv[2], handle_connection, &server);
}
