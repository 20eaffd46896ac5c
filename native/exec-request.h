/*
 * berth-exec's request: what to run in which sandbox, as whom. Parsing only (no system calls),
 * so that parser-fuzz.c runs it under the sanitizers exactly as berth-exec does.
 *
 * An 'r' frame whose entries are target=PID (the sandbox's first process), uid=N, gid=N,
 * cwd=DIR, each exactly once, then cgroup=PROCS_FILE, env=NAME=VALUE and arg=WORD, each repeated
 * as needed (the first arg is an absolute program path), and at most once tty=COLSxROWS (each
 * 1..65535): the program runs on a terminal of that size (berth-exec.c says how).
 */
#ifndef BERTH_EXEC_REQUEST_H
#define BERTH_EXEC_REQUEST_H

#include "request-frames.h"

#define EXEC_REQUEST_TYPE 'r'
#define MAX_EXEC_REQUEST (4u << 20)
#define MAX_CGROUPS 8
#define MAX_ENTRIES 4096
/* The kernel refuses any one argument or environment string longer than this (MAX_ARG_STRLEN,
 * its NUL included): refused here first, with a message that names it. */
#define MAX_EXEC_VALUE_BYTES (32u * 4096 - 1)
/* uid_t's largest, (uid_t)-1 being "no change" to the kernel. */
#define MAX_ID 0xfffffffeL
/* A window's side, in characters: struct winsize holds an unsigned short. */
#define MAX_WINDOW_SIDE 65535L

struct request {
  long target, uid, gid;
  const char *cwd;
  char *cgroups[MAX_CGROUPS];
  int cgroup_count;
  char *env[MAX_ENTRIES + 1];
  int env_count;
  char *argv[MAX_ENTRIES + 1];
  int argc;
  /* The terminal's window size; 0 and 0 without tty=. */
  long columns, rows;
};

/* "COLSxROWS" or "COLS ROWS" (SEPARATOR between), each side 1..MAX_WINDOW_SIDE. 0, or -1. */
static inline int parse_window_size(const char *text, char separator, long *columns,
                                    long *rows) {
  char copy[16];
  size_t length = strlen(text);
  if (length >= sizeof copy) return -1;
  memcpy(copy, text, length + 1);
  char *middle = strchr(copy, separator);
  if (middle == NULL) return -1;
  *middle = '\0';
  if (parse_number(copy, MAX_WINDOW_SIDE, columns) < 0 ||
      parse_number(middle + 1, MAX_WINDOW_SIDE, rows) < 0 || *columns == 0 || *rows == 0)
    return -1;
  return 0;
}

/* target, uid and gid: a number, once. */
static inline int single_number(const char *key, const char *value, long *field,
                                struct problem *problem) {
  if (*field >= 0) return refuse(problem, "bad request: %s is given twice", key);
  if (parse_number(value, MAX_ID, field) < 0)
    return refuse(problem, "bad request: %s is not a number from 0 to %ld", key, MAX_ID);
  return 0;
}

/* cgroup, env and arg: one more of a bounded list. */
static inline int append(char **list, int *count, int max, const char *what, char *value,
                         struct problem *problem) {
  if (*count == max) return refuse(problem, "bad request: more than %d %s", max, what);
  list[(*count)++] = value;
  return 0;
}

static inline int request_entry(const char *key, char *value, void *state,
                                struct problem *problem) {
  struct request *request = state;
  if (strcmp(key, "target") == 0) return single_number(key, value, &request->target, problem);
  if (strcmp(key, "uid") == 0) return single_number(key, value, &request->uid, problem);
  if (strcmp(key, "gid") == 0) return single_number(key, value, &request->gid, problem);
  if (strcmp(key, "cwd") == 0) {
    if (request->cwd != NULL) return refuse(problem, "bad request: cwd is given twice");
    request->cwd = value;
    return 0;
  }
  if (strcmp(key, "cgroup") == 0)
    return append(request->cgroups, &request->cgroup_count, MAX_CGROUPS, "cgroups", value, problem);
  if (strcmp(key, "env") == 0)
    return append(request->env, &request->env_count, MAX_ENTRIES, "environment variables", value,
                  problem);
  if (strcmp(key, "arg") == 0)
    return append(request->argv, &request->argc, MAX_ENTRIES, "arguments", value, problem);
  if (strcmp(key, "tty") == 0) {
    if (request->columns != 0) return refuse(problem, "bad request: tty is given twice");
    if (parse_window_size(value, 'x', &request->columns, &request->rows) < 0)
      return refuse(problem, "bad request: tty must be COLSxROWS, each from 1 to %ld",
                    MAX_WINDOW_SIDE);
    return 0;
  }
  return refuse(
      problem,
      "bad request: unknown key '%.32s' (want target, uid, gid, cwd, cgroup, env, arg, tty)", key);
}

/* Parses an 'r' request's payload in place; 0, or -1 with PROBLEM filled in. */
static inline int parse_request(char *payload, uint32_t length, struct request *request,
                                struct problem *problem) {
  memset(request, 0, sizeof *request);
  request->target = request->uid = request->gid = -1;
  struct entry_limits limits = {.max_entries = 5 + MAX_CGROUPS + 2 * MAX_ENTRIES,
                                .max_value_bytes = MAX_EXEC_VALUE_BYTES};
  if (each_entry(payload, length, limits, request_entry, request, problem) < 0) return -1;
  if (request->target <= 0 || request->uid < 0 || request->gid < 0 || request->cwd == NULL)
    return refuse(problem, "bad request: target (above 0), uid, gid and cwd are required");
  if (request->argc == 0 || request->argv[0][0] != '/')
    return refuse(problem, "bad request: the first arg must be an absolute program path");
  return 0;
}

#endif
