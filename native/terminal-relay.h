/*
 * berth-exec's keeper for a command on a terminal (a request with tty=): it relays between Berth's
 * connection and the terminal's master side, which the command made inside the sandbox and
 * passed over (berth-exec.c has the protocol). The keeper is root, outside the sandbox: it only
 * ever reads, writes and resizes that one descriptor, having checked it is a terminal's master.
 *
 * Both directions are bounded. Typed input: at most one frame is held (MAX_TYPED_BYTES), and the
 * socket is not read while it waits for the terminal to take it, so a program that does not read
 * its input holds Berth's writes. Output: each read of the master goes out as one frame with a
 * blocking write, so a Berth that does not read stops the keeper reading, and the program blocks
 * on a full terminal.
 */
#ifndef BERTH_TERMINAL_RELAY_H
#define BERTH_TERMINAL_RELAY_H

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#include "exec-request.h"
#include "request-frames.h"

/* The most one 'i' frame may carry; a 'w' frame is "COLS ROWS", at most 11 bytes. */
#define MAX_TYPED_BYTES 65536u
#define MAX_RESIZE_BYTES 11u
/* One read of the master; a terminal hands out at most a few KiB at a time anyway. */
#define TERMINAL_CHUNK 65536
/*
 * What the keeper still relays once the command's own process has exited: more than a terminal
 * holds (its line discipline's 4 KiB and its 64 KiB of buffers), so everything the command wrote
 * arrives, but a background job that keeps writing cannot keep the keeper relaying for ever.
 */
#define MAX_FINAL_OUTPUT_BYTES (1u << 20)

/* A frame from Berth, received a piece at a time without blocking. */
struct incoming_frame {
  unsigned char header[FRAME_HEADER];
  size_t header_received;
  uint32_t length;
  size_t payload_received;
  size_t payload_written; /* of an 'i' frame: how much the terminal has taken */
  unsigned char payload[MAX_TYPED_BYTES];
};

enum frame_progress { FRAME_REFUSED = -1, FRAME_PARTIAL = 0, FRAME_WHOLE = 1 };

static inline int frame_is_whole(const struct incoming_frame *frame) {
  return frame->header_received == FRAME_HEADER && frame->payload_received == frame->length;
}

static inline void forget_frame(struct incoming_frame *frame) {
  frame->header_received = frame->payload_received = frame->payload_written = 0;
  frame->length = 0;
}

/* The bound of each frame type Berth may send; -1 for a type it may not. */
static inline long frame_bound(unsigned char type) {
  if (type == 'i') return MAX_TYPED_BYTES;
  if (type == 'w') return MAX_RESIZE_BYTES;
  return -1;
}

/*
 * Receives what the socket has of the current frame, never past its end (the rest stays in the
 * socket, where it holds Berth back). FRAME_REFUSED when Berth is gone or sent what it may not.
 */
static inline enum frame_progress receive_frame(int socket_fd, struct incoming_frame *frame) {
  for (;;) {
    int in_header = frame->header_received < FRAME_HEADER;
    unsigned char *into = in_header ? frame->header + frame->header_received
                                    : frame->payload + frame->payload_received;
    size_t wanted = in_header ? FRAME_HEADER - frame->header_received
                              : frame->length - frame->payload_received;
    if (wanted == 0) return FRAME_WHOLE;
    ssize_t got = recv(socket_fd, into, wanted, MSG_DONTWAIT);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && errno == EAGAIN) return FRAME_PARTIAL;
    if (got <= 0) return FRAME_REFUSED;
    if (!in_header) {
      frame->payload_received += (size_t)got;
      continue;
    }
    frame->header_received += (size_t)got;
    if (frame->header_received < FRAME_HEADER) continue;
    frame->length = (uint32_t)frame->header[1] << 24 | (uint32_t)frame->header[2] << 16 |
                    (uint32_t)frame->header[3] << 8 | (uint32_t)frame->header[4];
    long bound = frame_bound(frame->header[0]);
    if (bound < 0 || frame->length > (uint32_t)bound) return FRAME_REFUSED;
  }
}

/* A 'w' frame: the new window size, which makes the kernel send SIGWINCH to the foreground. */
static inline int resize_terminal(int master, const struct incoming_frame *frame) {
  char text[MAX_RESIZE_BYTES + 1];
  memcpy(text, frame->payload, frame->length);
  text[frame->length] = '\0';
  long columns, rows;
  if (parse_window_size(text, ' ', &columns, &rows) < 0) return -1;
  struct winsize size = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)columns};
  ioctl(master, TIOCSWINSZ, &size);
  return 0;
}

/* Types what the terminal takes of a pending 'i' frame. 1 when all of it is typed, 0 when the
 * terminal is full, -1 when its other side is closed (nothing can be typed any more). */
static inline int type_input(int master, struct incoming_frame *frame) {
  while (frame->payload_written < frame->length) {
    size_t left = frame->length - frame->payload_written;
    ssize_t written = write(master, frame->payload + frame->payload_written, left);
    if (written < 0 && errno == EINTR) continue;
    if (written < 0 && errno == EAGAIN) return 0;
    if (written < 0) return -1;
    frame->payload_written += (size_t)written;
  }
  return 1;
}

enum terminal_read {
  TERMINAL_BERTH_GONE = -1,
  TERMINAL_CLOSED = 0,
  TERMINAL_RELAYED = 1,
  TERMINAL_EMPTY = 2
};

/* Relays one read of the master as a 'b' frame, adding its length to *RELAYED. CLOSED once no
 * one holds the terminal's other side (EIO) and what it had is read. */
static inline enum terminal_read relay_terminal(int socket_fd, int master, unsigned char *buffer,
                                                size_t *relayed) {
  for (;;) {
    ssize_t got = read(master, buffer + FRAME_HEADER, TERMINAL_CHUNK);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && errno == EAGAIN) return TERMINAL_EMPTY;
    if (got <= 0) return TERMINAL_CLOSED;
    frame_header(buffer, 'b', (uint32_t)got);
    if (write_all(socket_fd, buffer, FRAME_HEADER + (size_t)got) < 0) return TERMINAL_BERTH_GONE;
    *relayed += (size_t)got;
    return TERMINAL_RELAYED;
  }
}

/* Once the command's own process has exited: what the terminal already holds, within a bound.
 * 0, or -1 when Berth is gone. */
static inline int relay_final_output(int socket_fd, int master, unsigned char *buffer) {
  for (size_t relayed = 0; relayed < MAX_FINAL_OUTPUT_BYTES;) {
    enum terminal_read result = relay_terminal(socket_fd, master, buffer, &relayed);
    if (result == TERMINAL_BERTH_GONE) return -1;
    if (result != TERMINAL_RELAYED) return 0;
  }
  return 0;
}

struct terminal_relay {
  int socket_fd, master, child_fd;
  int master_open; /* until its other side is closed by everyone */
  struct incoming_frame frame;
  unsigned char output[FRAME_HEADER + TERMINAL_CHUNK];
};

/* Handles what the socket brought: a whole 'w' is applied at once, a whole 'i' waits for the
 * terminal to take it. -1 when the connection is to be closed. */
static inline int handle_socket(struct terminal_relay *relay) {
  enum frame_progress progress = receive_frame(relay->socket_fd, &relay->frame);
  if (progress == FRAME_REFUSED) return -1;
  if (progress == FRAME_PARTIAL) return 0;
  if (relay->frame.header[0] == 'w') {
    if (resize_terminal(relay->master, &relay->frame) < 0) return -1;
    forget_frame(&relay->frame);
  }
  return 0;
}

/* Types the pending input, if any; dropped once the terminal has no reader left. */
static inline void handle_input(struct terminal_relay *relay) {
  if (!frame_is_whole(&relay->frame) || relay->frame.header[0] != 'i') return;
  int typed = relay->master_open ? type_input(relay->master, &relay->frame) : -1;
  if (typed != 0) forget_frame(&relay->frame);
}

/*
 * Relays between Berth and the terminal until the command's own process (CHILD_FD, its pidfd)
 * exits, then what the terminal already holds. 0, or -1 when the connection is to be closed
 * (Berth is gone, or sent a frame it may not).
 */
static inline int relay_terminal_session(struct terminal_relay *relay) {
  for (;;) {
    int input_pending = frame_is_whole(&relay->frame);
    short master_events = (short)(POLLIN | (input_pending ? POLLOUT : 0));
    struct pollfd fds[3] = {
        /* While input waits for the terminal, the socket is left alone; its hang-up still shows. */
        {relay->socket_fd, input_pending ? 0 : POLLIN, 0},
        {relay->master_open ? relay->master : -1, master_events, 0},
        {relay->child_fd, POLLIN, 0},
    };
    if (poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (fds[2].revents != 0)
      return relay_final_output(relay->socket_fd, relay->master, relay->output);
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      size_t relayed = 0;
      enum terminal_read result =
          relay_terminal(relay->socket_fd, relay->master, relay->output, &relayed);
      if (result == TERMINAL_BERTH_GONE) return -1;
      if (result == TERMINAL_CLOSED) relay->master_open = 0;
    }
    if ((fds[1].revents & POLLOUT) || !relay->master_open) handle_input(relay);
    if (input_pending && (fds[0].revents & (POLLHUP | POLLERR))) return -1;
    if (!input_pending && fds[0].revents != 0 && handle_socket(relay) < 0) return -1;
  }
}

#endif
