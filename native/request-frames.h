/*
 * Frames and requests, shared by Berth's root servers (berth-exec, berth-mount) and by the
 * harness that fuzzes their parsers (parser-fuzz.c). Nothing here makes a system call other than
 * read and write, so all of it runs under the sanitizers.
 *
 * A frame, both ways: [type: u8][length: u32 big-endian][payload]. A request is one frame whose
 * payload is key=value entries, each ending in NUL. Everything is bounded before it is used:
 * the payload's length before anything is allocated, the number of entries and each value's
 * length while splitting. A request that breaks a bound is refused with a message that says
 * which, never cut to fit.
 */
#ifndef BERTH_REQUEST_FRAMES_H
#define BERTH_REQUEST_FRAMES_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FRAME_HEADER 5

/* Why a request is refused or an operation failed: sent back to Berth as an 'f' frame. */
struct problem {
  char text[512];
};

static inline int write_all(int fd, const void *data, size_t length) {
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

/* Reads exactly LENGTH bytes; -1 on an error or an end of input before them. */
static inline int read_all(int fd, void *data, size_t length) {
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

static inline void frame_header(unsigned char *header, char type, uint32_t length) {
  header[0] = (unsigned char)type;
  header[1] = (unsigned char)(length >> 24);
  header[2] = (unsigned char)(length >> 16);
  header[3] = (unsigned char)(length >> 8);
  header[4] = (unsigned char)length;
}

static inline int send_frame(int socket_fd, char type, const void *payload, uint32_t length) {
  unsigned char header[FRAME_HEADER];
  frame_header(header, type, length);
  if (write_all(socket_fd, header, sizeof header) < 0) return -1;
  return write_all(socket_fd, payload, length);
}

/* printf into a message buffer, cut to fit; returns the length. */
static inline size_t format_message(char *text, size_t size, const char *format, va_list args) {
  int length = vsnprintf(text, size, format, args);
  if (length < 0) return 0;
  return (size_t)length >= size ? size - 1 : (size_t)length;
}

static inline void send_text(int socket_fd, char type, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
static inline void send_text(int socket_fd, char type, const char *format, ...) {
  char text[512];
  va_list args;
  va_start(args, format);
  size_t length = format_message(text, sizeof text, format, args);
  va_end(args);
  send_frame(socket_fd, type, text, (uint32_t)length);
}

/* Fills PROBLEM in; returns -1, so that `return refuse(...)` reads as what it does. */
static inline int refuse(struct problem *problem, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
static inline int refuse(struct problem *problem, const char *format, ...) {
  va_list args;
  va_start(args, format);
  format_message(problem->text, sizeof problem->text, format, args);
  va_end(args);
  return -1;
}

/*
 * Reads one request frame of type TYPE with at most MAX_LENGTH bytes of payload into a new
 * buffer (*PAYLOAD, to free; one byte longer than *LENGTH). Returns 0, or -1 with PROBLEM filled
 * in and nothing allocated.
 */
static inline int read_request(int fd, char type, uint32_t max_length, char **payload,
                               uint32_t *length, struct problem *problem) {
  unsigned char header[FRAME_HEADER];
  *payload = NULL;
  *length = 0;
  if (read_all(fd, header, sizeof header) < 0)
    return refuse(problem, "bad request: the connection ended inside the frame header");
  if (header[0] != (unsigned char)type)
    return refuse(problem, "bad request: a frame of type 0x%02x, where this server takes only '%c'",
                  header[0], type);
  *length = (uint32_t)header[1] << 24 | (uint32_t)header[2] << 16 | (uint32_t)header[3] << 8 |
            (uint32_t)header[4];
  if (*length > max_length)
    return refuse(problem, "bad request: %u bytes, more than the %u a request may have", *length,
                  max_length);
  char *buffer = malloc((size_t)*length + 1);
  if (buffer == NULL) return refuse(problem, "out of memory for a %u-byte request", *length);
  if (read_all(fd, buffer, *length) < 0) {
    free(buffer);
    return refuse(problem, "bad request: the connection ended inside its %u-byte payload", *length);
  }
  buffer[*length] = '\0';
  *payload = buffer;
  return 0;
}

/* Strict decimal: digits only, no sign, no spaces, at most MAX. */
static inline int parse_number(const char *text, long max, long *value) {
  if (*text < '0' || *text > '9') return -1;
  long result = 0;
  for (; *text != '\0'; text++) {
    if (*text < '0' || *text > '9') return -1;
    int digit = *text - '0';
    if (result > (max - digit) / 10) return -1;
    result = result * 10 + digit;
  }
  *value = result;
  return 0;
}

struct entry_limits {
  int max_entries;
  size_t max_value_bytes;
};

/* Called for each entry in turn; returns 0, or -1 with PROBLEM filled in. */
typedef int (*entry_handler)(const char *key, char *value, void *state, struct problem *problem);

/*
 * Walks the NUL-terminated key=value entries of a request, splitting each in place at its first
 * '=' (a value may hold more, as env=NAME=VALUE does). Returns 0, or -1 with PROBLEM filled in.
 */
static inline int each_entry(char *payload, uint32_t length, struct entry_limits limits,
                             entry_handler handle, void *state, struct problem *problem) {
  if (length == 0) return refuse(problem, "bad request: it has no entries");
  if (payload[length - 1] != '\0')
    return refuse(problem, "bad request: its last entry does not end in NUL");
  int count = 0;
  for (char *entry = payload, *next; entry < payload + length; entry = next) {
    size_t entry_length = strlen(entry);
    next = entry + entry_length + 1;
    if (++count > limits.max_entries)
      return refuse(problem, "bad request: more than %d entries", limits.max_entries);
    char *value = strchr(entry, '=');
    if (value == NULL || value == entry)
      return refuse(problem, "bad request: entry %d is not key=value", count);
    *value++ = '\0';
    if (entry_length - (size_t)(value - entry) > limits.max_value_bytes)
      return refuse(problem, "bad request: the value of '%.32s' is longer than %zu bytes", entry,
                    limits.max_value_bytes);
    if (handle(entry, value, state, problem) < 0) return -1;
  }
  return 0;
}

#endif
