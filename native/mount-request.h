/*
 * berth-mount's request: which mount operation, on which paths. Parsing only (no system calls),
 * so that parser-fuzz.c runs it under the sanitizers exactly as berth-mount does.
 *
 * An 'm' frame whose entries are op=NAME and exactly the keys that operation takes, each once:
 *
 *   op=loop-image  image=FILE target=DIR        an ext4 image on DIR through a loop device
 *   op=share       target=DIR                   DIR made a shared mount point
 *   op=idmap-bind  source=DIR target=DIR userns-pid=PID
 *                                               an idmapped copy of DIR on TARGET, its ids
 *                                               mapped through PID's user namespace
 *   op=image-root  root=DIR ids=UID:GID:HOST scratch=DIR size=BYTES target=DIR
 *                                               an image sandbox's root (see berth-mount.c)
 *   op=unmount     target=DIR                   DIR unmounted
 *
 * A missing, unknown or repeated key is refused, as is an op that is not named. Every path must
 * lie inside the folder berth-mount confines mounts to (Berth's data directory): checked here
 * by its text, then resolved beneath that folder's descriptor without following any symbolic
 * link (confined-paths.h).
 */
#ifndef BERTH_MOUNT_REQUEST_H
#define BERTH_MOUNT_REQUEST_H

#include <limits.h>

#include "request-frames.h"

#define MOUNT_REQUEST_TYPE 'm'
#define MAX_MOUNT_KEYS 5
#define MAX_MOUNT_REQUEST (8u * PATH_MAX)
/* Image ids a root is idmapped for: the image's uid and gid must be below this. */
#define IMAGE_ID_COUNT 65536L
#define MAX_HOST_ID 0xfffffffeL
#define MAX_PID 4194304L
#define MAX_SCRATCH_BYTES (1L << 50)

enum mount_op { LOOP_IMAGE, SHARE, IDMAP_BIND, IMAGE_ROOT, UNMOUNT, MOUNT_OP_COUNT };

struct mount_op_spec {
  const char *name;
  const char *keys[MAX_MOUNT_KEYS + 1]; /* NULL-ended */
  const char *key_list;                 /* the same, for messages */
};

static const struct mount_op_spec mount_ops[MOUNT_OP_COUNT] = {
    [LOOP_IMAGE] = {"loop-image", {"image", "target", NULL}, "image and target"},
    [SHARE] = {"share", {"target", NULL}, "target"},
    [IDMAP_BIND] = {"idmap-bind", {"source", "target", "userns-pid", NULL},
                    "source, target and userns-pid"},
    [IMAGE_ROOT] = {"image-root", {"root", "ids", "scratch", "size", "target", NULL},
                    "root, ids, scratch, size and target"},
    [UNMOUNT] = {"unmount", {"target", NULL}, "target"},
};

#define MOUNT_OP_NAMES "loop-image, share, idmap-bind, image-root or unmount"

/* The folder mounts are confined to, as Berth names it and as its links resolve (mountinfo, which
 * Berth reads to find what to unmount, names the latter). */
struct confinement {
  const char *folders[2];
  int count;
};

/* A path of the request: as Berth gave it (for messages), and relative to the confining folder
 * (what is resolved, beneath that folder's descriptor). */
struct confined_path {
  const char *given;
  const char *beneath;
};

struct mount_request {
  enum mount_op op;
  struct confined_path image, target, source, root, scratch;
  long userns_pid, size_bytes;
  long uid, gid, host; /* image-root's ids */
};

/* The entries of one request, before they are checked against its op. */
struct mount_entries {
  const char *keys[1 + MAX_MOUNT_KEYS];
  char *values[1 + MAX_MOUNT_KEYS];
  int count;
};

static inline int collect_entry(const char *key, char *value, void *state,
                                struct problem *problem) {
  struct mount_entries *entries = state;
  (void)problem; /* each_entry bounds the count */
  entries->keys[entries->count] = key;
  entries->values[entries->count++] = value;
  return 0;
}

/* Checks the text of PATH against the confinement; the kernel checks the rest. */
static inline int confine_path(const char *key, const char *path,
                               const struct confinement *confinement,
                               struct confined_path *out, struct problem *problem) {
  if (path[0] != '/') return refuse(problem, "bad request: %s is not an absolute path", key);
  for (int i = 0; i < confinement->count; i++) {
    const char *folder = confinement->folders[i];
    size_t length = strlen(folder);
    if (strncmp(path, folder, length) != 0 || (path[length] != '/' && path[length] != '\0'))
      continue;
    const char *beneath = path + length;
    while (*beneath == '/') beneath++;
    if (*beneath == '\0')
      return refuse(problem, "%s %.256s is the folder mounts are confined to, not one inside it",
                    key, path);
    for (const char *part = beneath; part != NULL; part = strchr(part, '/')) {
      while (*part == '/') part++;
      if (strncmp(part, "..", 2) == 0 && (part[2] == '/' || part[2] == '\0'))
        return refuse(problem, "bad request: %s %.256s has a '..' component", key, path);
    }
    *out = (struct confined_path){.given = path, .beneath = beneath};
    return 0;
  }
  return refuse(problem, "%s %.256s is outside %.256s, the folder mounts are confined to", key,
                path, confinement->folders[0]);
}

/* UID:GID:HOST, the image's ids and the session's host id. */
static inline int parse_ids(char *text, struct mount_request *request, struct problem *problem) {
  char *gid = strchr(text, ':');
  char *host = gid == NULL ? NULL : strchr(gid + 1, ':');
  if (host == NULL) return refuse(problem, "bad request: ids must be UID:GID:HOST");
  *gid++ = '\0';
  *host++ = '\0';
  if (parse_number(text, IMAGE_ID_COUNT - 1, &request->uid) < 0 ||
      parse_number(gid, IMAGE_ID_COUNT - 1, &request->gid) < 0 ||
      parse_number(host, MAX_HOST_ID, &request->host) < 0 || request->host == 0)
    return refuse(problem,
                  "bad request: ids must be UID:GID:HOST, UID and GID below %ld, HOST above 0",
                  IMAGE_ID_COUNT);
  return 0;
}

/* Puts one (already allowed) key's value in its place in REQUEST. */
static inline int take_value(struct mount_request *request, const char *key, char *value,
                             const struct confinement *confinement,
                             struct problem *problem) {
  struct confined_path *path = strcmp(key, "image") == 0     ? &request->image
                               : strcmp(key, "target") == 0  ? &request->target
                               : strcmp(key, "source") == 0  ? &request->source
                               : strcmp(key, "root") == 0    ? &request->root
                               : strcmp(key, "scratch") == 0 ? &request->scratch
                                                             : NULL;
  if (path != NULL) return confine_path(key, value, confinement, path, problem);
  if (strcmp(key, "ids") == 0) return parse_ids(value, request, problem);
  if (strcmp(key, "userns-pid") == 0) {
    if (parse_number(value, MAX_PID, &request->userns_pid) < 0 || request->userns_pid == 0)
      return refuse(problem, "bad request: userns-pid must be a process id");
    return 0;
  }
  if (parse_number(value, MAX_SCRATCH_BYTES, &request->size_bytes) < 0 || request->size_bytes == 0)
    return refuse(problem, "bad request: size must be a number of bytes above 0");
  return 0;
}

/* Which op the entries name; -1 with PROBLEM filled in if none, an unknown one, or two. */
static inline int named_op(const struct mount_entries *entries, struct problem *problem) {
  int op = -1;
  for (int i = 0; i < entries->count; i++) {
    if (strcmp(entries->keys[i], "op") != 0) continue;
    if (op >= 0) return refuse(problem, "bad request: op is given twice");
    for (op = 0; op < MOUNT_OP_COUNT && strcmp(entries->values[i], mount_ops[op].name) != 0;)
      op++;
    if (op == MOUNT_OP_COUNT)
      return refuse(problem, "bad request: unknown op '%.32s' (want " MOUNT_OP_NAMES ")",
                    entries->values[i]);
  }
  if (op < 0) return refuse(problem, "bad request: no op named (want op=" MOUNT_OP_NAMES ")");
  return op;
}

/* Index of KEY among SPEC's keys, or -1. */
static inline int key_index(const struct mount_op_spec *spec, const char *key) {
  for (int i = 0; spec->keys[i] != NULL; i++) {
    if (strcmp(spec->keys[i], key) == 0) return i;
  }
  return -1;
}

/* Parses an 'm' request's payload in place; 0, or -1 with PROBLEM filled in. */
static inline int parse_mount_request(char *payload, uint32_t length,
                                      const struct confinement *confinement,
                                      struct mount_request *request, struct problem *problem) {
  memset(request, 0, sizeof *request);
  struct mount_entries entries = {0};
  struct entry_limits limits = {.max_entries = 1 + MAX_MOUNT_KEYS, .max_value_bytes = PATH_MAX - 1};
  if (each_entry(payload, length, limits, collect_entry, &entries, problem) < 0) return -1;
  int op = named_op(&entries, problem);
  if (op < 0) return -1;
  request->op = (enum mount_op)op;
  const struct mount_op_spec *spec = &mount_ops[op];
  int given[MAX_MOUNT_KEYS] = {0};
  for (int i = 0; i < entries.count; i++) {
    if (strcmp(entries.keys[i], "op") == 0) continue;
    int index = key_index(spec, entries.keys[i]);
    if (index < 0)
      return refuse(problem, "bad request: op=%s takes %s, not '%.32s'", spec->name, spec->key_list,
                    entries.keys[i]);
    if (given[index]++ > 0)
      return refuse(problem, "bad request: %s is given twice", entries.keys[i]);
    if (take_value(request, entries.keys[i], entries.values[i], confinement, problem) < 0)
      return -1;
  }
  for (int i = 0; spec->keys[i] != NULL; i++) {
    if (given[i] == 0)
      return refuse(problem, "bad request: op=%s needs %s; %s is missing", spec->name,
                    spec->key_list, spec->keys[i]);
  }
  return 0;
}

#endif
