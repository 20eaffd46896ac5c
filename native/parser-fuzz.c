/*
 * parser-fuzz: runs the request framing and parsing of berth-exec and berth-mount, exactly as
 * they do (the same headers), on inputs from stdin. Built with AddressSanitizer and
 * UndefinedBehaviorSanitizer by test/native-parser.test.ts, which feeds it hostile inputs; not
 * part of Berth.
 *
 *   parser-fuzz < CASES
 *
 * CASES is a sequence of [length: u32 big-endian][bytes]: each case's bytes are what a client
 * sent on a connection before closing it. For each case, in order, two lines:
 *   N exec ok argc=A env=E cgroups=C cwd=DIR[ tty=COLSxROWS] | N exec refused: MESSAGE
 *   N mount ok op=NAME target=PATH          | N mount refused: MESSAGE
 * (PATH relative to the confining folder, /berth-data; bytes outside printable ASCII as '?').
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "exec-request.h"
#include "mount-request.h"
#include "request-frames.h"

static const struct confinement confinement = {.folders = {"/berth-data", "/srv/berth-data"},
                                               .count = 2};

/* Prints TEXT on one line, whatever bytes it holds. */
static void print_printable(const char *text) {
  for (; *text != '\0'; text++) putchar(*text >= ' ' && *text <= '~' ? *text : '?');
}

static void print_outcome(long number, const char *program, int refused, const char *text) {
  printf("%ld %s %s", number, program, refused ? "refused: " : "ok ");
  print_printable(text);
  putchar('\n');
}

static void run_exec(long number, int input) {
  static struct request request;
  struct problem problem;
  char *payload;
  uint32_t length;
  lseek(input, 0, SEEK_SET);
  if (read_request(input, EXEC_REQUEST_TYPE, MAX_EXEC_REQUEST, &payload, &length, &problem) < 0)
    return print_outcome(number, "exec", 1, problem.text);
  if (parse_request(payload, length, &request, &problem) < 0) {
    free(payload);
    return print_outcome(number, "exec", 1, problem.text);
  }
  char summary[256], terminal[64] = "";
  if (request.columns != 0)
    snprintf(terminal, sizeof terminal, " tty=%ldx%ld", request.columns, request.rows);
  snprintf(summary, sizeof summary, "argc=%d env=%d cgroups=%d cwd=%.128s%s", request.argc,
           request.env_count, request.cgroup_count, request.cwd, terminal);
  free(payload);
  print_outcome(number, "exec", 0, summary);
}

static void run_mount(long number, int input) {
  struct mount_request request;
  struct problem problem;
  char *payload;
  uint32_t length;
  lseek(input, 0, SEEK_SET);
  if (read_request(input, MOUNT_REQUEST_TYPE, MAX_MOUNT_REQUEST, &payload, &length, &problem) < 0)
    return print_outcome(number, "mount", 1, problem.text);
  if (parse_mount_request(payload, length, &confinement, &request, &problem) < 0) {
    free(payload);
    return print_outcome(number, "mount", 1, problem.text);
  }
  char summary[PATH_MAX + 64];
  snprintf(summary, sizeof summary, "op=%s target=%s", mount_ops[request.op].name,
           request.target.beneath);
  free(payload);
  print_outcome(number, "mount", 0, summary);
}

int main(void) {
  int input = memfd_create("case", MFD_CLOEXEC);
  if (input < 0) return perror("memfd_create"), 1;
  for (long number = 0;; number++) {
    unsigned char header[4];
    if (read_all(0, header, sizeof header) < 0) return 0;
    size_t length = (size_t)header[0] << 24 | (size_t)header[1] << 16 | (size_t)header[2] << 8 |
                    (size_t)header[3];
    char *bytes = malloc(length + 1);
    if (bytes == NULL || read_all(0, bytes, length) < 0) return fprintf(stderr, "short case\n"), 1;
    if (ftruncate(input, 0) < 0 || pwrite(input, bytes, length, 0) != (ssize_t)length)
      return perror("memfd"), 1;
    free(bytes);
    run_exec(number, input);
    run_mount(number, input);
  }
}
