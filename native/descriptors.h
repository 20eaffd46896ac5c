/*
 * What Berth's native helpers pass on to the programs they start: stdin, stdout, stderr and the
 * descriptors they name, never one they happened to inherit (Berth's, bwrap's, a parent's).
 * close_range needs Linux 5.9, CLOSE_RANGE_CLOEXEC 5.11; Berth needs 5.12 (idmapped mounts).
 */
#ifndef BERTH_DESCRIPTORS_H
#define BERTH_DESCRIPTORS_H

#include <unistd.h>

/* Closes every descriptor above 2 except KEEP[0..COUNT), which must be ascending and above 2. */
static inline int close_descriptors_except(const int *keep, int count) {
  unsigned int first = 3;
  for (int i = 0; i < count; i++) {
    unsigned int kept = (unsigned int)keep[i];
    if (kept > first && close_range(first, kept - 1, 0) < 0) return -1;
    first = kept + 1;
  }
  return close_range(first, ~0u, 0);
}

/* Marks every descriptor above 2 close-on-exec: for a process that still needs its own until
 * it execs (then the kernel closes them all at once). */
static inline int close_descriptors_on_exec(void) {
  return close_range(3, ~0u, CLOSE_RANGE_CLOEXEC);
}

#endif
