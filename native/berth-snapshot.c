/*
 * berth-snapshot: point-in-time copies of session volumes' images, and the block maps that tell
 * which parts of two copies differ.
 *
 *   berth-snapshot clone [--live MOUNTDIR] SOURCE TARGET
 *   berth-snapshot extents FILE
 *
 * Run by Berth as root, with paths inside its root-only data directory: the volume images live
 * on an XFS filesystem with reflink (the pool, adapters/volumes/reflink-pool.ts), so a copy is a
 * clone (FICLONE) that shares every block with its source until either is written.
 *
 * clone: TARGET becomes a clone of SOURCE. With --live, MOUNTDIR is where SOURCE's ext4 is
 * mounted and in use: it is first flushed (syncfs), then its free blocks are discarded (FITRIM:
 * they become holes in the image, so a checkpoint neither reads nor uploads what deleted files
 * left behind), then it is cloned while writers go on. The clone holds every write the loop device
 * had completed when it was taken: what a power cut at that instant would have left, which
 * ext4's journal makes consistent (mounting replays it). The filesystem is not frozen: on
 * Linux 6.x a freeze waits for RCU grace periods and stalls writers some 30 ms, where the clone
 * alone holds them for about a millisecond (bench/block-snapshots.ts). Prints one JSON line,
 * {"cloneMicros":N}: how long the clone itself took.
 *
 * extents: FILE's block map (FIEMAP), one line per extent: `logical physical length flags`, in
 * decimal bytes (flags as the kernel's FIEMAP_EXTENT_* bits).
 *
 * Failure: a non-zero exit (1: failed, 2: bad usage) and one line on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Extents asked for per FIEMAP call: 56 bytes each, so 14 KiB of buffer. */
#define EXTENTS_PER_CALL 256

static int fail(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* Says why on stderr (one line); returns the exit status for a failure. */
static int fail(const char *format, ...) {
  va_list arguments;
  va_start(arguments, format);
  fputs("berth-snapshot: ", stderr);
  vfprintf(stderr, format, arguments);
  fputc('\n', stderr);
  va_end(arguments);
  return 1;
}

static long long monotonic_micros(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec * 1000000LL + now.tv_nsec / 1000;
}

/* A regular file opened read-only, never through a symbolic link; -1 with errno set if not. */
static int open_regular_file(const char *path) {
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return -1;
  struct stat status;
  if (fstat(fd, &status) < 0) {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  if (!S_ISREG(status.st_mode)) {
    close(fd);
    errno = EINVAL;
    return -1;
  }
  return fd;
}

/*
 * Makes the live filesystem MOUNT is on ready to be cloned: everything written so far flushed
 * to the image, then its free blocks discarded (a filesystem or device without discard is no
 * error: its free blocks are then read as they are). Flushed first: ext4 hands the blocks of a
 * deleted file back to its allocator, where FITRIM finds them, only once the deletion's journal
 * transaction commits, which syncfs forces. 0, or the exit status after saying why.
 */
static int flush_and_trim(int mount, const char *mount_path) {
  if (syncfs(mount) < 0) return fail("flushing %s: %s", mount_path, strerror(errno));
  struct fstrim_range everything = {.start = 0, .len = UINT64_MAX, .minlen = 0};
  if (ioctl(mount, FITRIM, &everything) < 0 && errno != EOPNOTSUPP && errno != ENOTTY)
    return fail("discarding the free blocks of %s: %s", mount_path, strerror(errno));
  return 0;
}

/* clone [--live MOUNTDIR] SOURCE TARGET */
static int clone_command(const char *mount_path, const char *source_path,
                         const char *target_path) {
  /*
   * Blocked from before TARGET exists until the process ends, moments later: a signal must not
   * leave a half-made TARGET behind. Those that arrive meanwhile are dropped at exit.
   */
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, NULL);
  int source = open_regular_file(source_path);
  if (source < 0) return fail("opening %s: %s", source_path, strerror(errno));
  int mount = -1;
  if (mount_path != NULL) {
    mount = open(mount_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (mount < 0) return fail("opening %s: %s", mount_path, strerror(errno));
  }
  /* O_EXCL refuses an existing TARGET, a symbolic link included, dangling or not. */
  int target = open(target_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (target < 0) return fail("creating %s: %s", target_path, strerror(errno));
  int status = mount >= 0 ? flush_and_trim(mount, mount_path) : 0;
  long long started = monotonic_micros();
  if (status == 0 && ioctl(target, FICLONE, source) < 0)
    status = fail("cloning %s: %s", source_path, strerror(errno));
  long long clone_micros = monotonic_micros() - started;
  if (status == 0 && close(target) < 0)
    status = fail("closing %s: %s", target_path, strerror(errno));
  if (status != 0) {
    unlink(target_path); /* ours alone: created with O_EXCL in a root-only folder */
    return status;
  }
  printf("{\"cloneMicros\":%lld}\n", clone_micros);
  return fflush(stdout) == 0 ? 0 : fail("writing the result: %s", strerror(errno));
}

/* extents FILE: FIEMAP from the start to the last extent, a batch at a time. */
static int extents_command(const char *path) {
  int file = open_regular_file(path);
  if (file < 0) return fail("opening %s: %s", path, strerror(errno));
  size_t size = sizeof(struct fiemap) + EXTENTS_PER_CALL * sizeof(struct fiemap_extent);
  struct fiemap *map = calloc(1, size);
  if (map == NULL) return fail("out of memory");
  uint64_t next = 0;
  /* Flushed once, by the first call: later ones map what it wrote. */
  uint32_t flags = FIEMAP_FLAG_SYNC;
  for (;;) {
    memset(map, 0, size);
    map->fm_start = next;
    map->fm_length = FIEMAP_MAX_OFFSET - next;
    map->fm_flags = flags;
    map->fm_extent_count = EXTENTS_PER_CALL;
    if (ioctl(file, FS_IOC_FIEMAP, map) < 0)
      return fail("mapping %s: %s", path, strerror(errno));
    flags = 0;
    if (map->fm_mapped_extents == 0) break;
    const struct fiemap_extent *last = &map->fm_extents[map->fm_mapped_extents - 1];
    for (uint32_t i = 0; i < map->fm_mapped_extents; i++) {
      const struct fiemap_extent *extent = &map->fm_extents[i];
      printf("%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu32 "\n", (uint64_t)extent->fe_logical,
             (uint64_t)extent->fe_physical, (uint64_t)extent->fe_length, extent->fe_flags);
    }
    if (last->fe_flags & FIEMAP_EXTENT_LAST) break;
    next = last->fe_logical + last->fe_length;
  }
  free(map);
  return fflush(stdout) == 0 ? 0 : fail("writing the extents: %s", strerror(errno));
}

static int usage(void) {
  fputs("usage: berth-snapshot clone [--live MOUNTDIR] SOURCE TARGET\n"
        "       berth-snapshot extents FILE\n",
        stderr);
  return 2;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage();
  const char *command = argv[1];
  if (strcmp(command, "clone") == 0 && argc == 4) return clone_command(NULL, argv[2], argv[3]);
  if (strcmp(command, "clone") == 0 && argc == 6 && strcmp(argv[2], "--live") == 0)
    return clone_command(argv[3], argv[4], argv[5]);
  if (strcmp(command, "extents") == 0 && argc == 3) return extents_command(argv[2]);
  return usage();
}
