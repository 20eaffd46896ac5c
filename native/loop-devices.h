/*
 * Loop devices for berth-mount's op=loop-image: one free device bound to an image file's
 * descriptor, under a lock that makes Berth's concurrent attaches take turns.
 */
#ifndef BERTH_LOOP_DEVICES_H
#define BERTH_LOOP_DEVICES_H

#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* How long one attach may keep asking for a free loop device that others keep taking first. */
#define LOOP_ATTACH_TIMEOUT_MS 10000

static inline long monotonic_ms(void) {
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
static inline int claim_free_loop(int control, int backing, char *device, size_t device_size) {
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
 * Attaches the image open at BACKING to a free loop device that detaches itself at the last
 * unmount; returns its fd, its name in DEVICE. Berth's own attaches (one process each) take
 * turns under an exclusive flock of /dev/loop-control, each through its own open of it:
 * otherwise every one of them is named the same free device at once and all but one lose it,
 * round after round. Programs outside Berth can still take a device first, which
 * claim_free_loop rides out.
 */
static inline int attach_loop(int backing, char *device, size_t device_size) {
  int loop = -1;
  int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (control >= 0 && flock(control, LOCK_EX) == 0)
    loop = claim_free_loop(control, backing, device, device_size);
  int failure = errno;
  if (control >= 0) close(control); /* and with it the lock */
  errno = failure;
  return loop;
}

#endif
