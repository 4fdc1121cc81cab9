/* qed_syscalls.so: an LD_PRELOAD library for system-call-level testing of the
 * QED plugin inside a real nbdkit. For ONE file (the image) it
 *   - records every call that changes the file (pwrite, pwritev, write,
 *     fallocate, ftruncate, fsync, fdatasync, ...) with its arguments and the
 *     bytes written, in the order the calls took effect, to a log file
 *     (format: syscall_record.h);
 *   - makes chosen calls fail (EIO, ENOSPC, EOPNOTSUPP, ...) without making
 *     them, as a full disk or a failing device would;
 *   - can delay chosen calls, to widen race windows in the caller, by a fixed
 *     time or by seeded random times before and after each call (a schedule);
 *   - makes reads of a second file (the backing file) fail, if asked.
 * Every other file descriptor passes straight through.
 *
 * Environment (read once, at load time):
 *   QED_SYSCALL_PATH   the file to watch (any path naming it: fds are matched
 *                      by device and inode when they are opened)
 *   QED_SYSCALL_LOG    where to append records; unset: record nothing
 *   QED_SYSCALL_DATA   0: records carry no data bytes (smaller logs)
 *   QED_SYSCALL_BACKING  a second file (the backing file) whose reads (pread,
 *                      pread64) may fail and be delayed; nothing of it is
 *                      logged
 *   QED_SYSCALL_FAIL   comma-separated KIND:WHEN:ERRNO, where KIND is write,
 *                      fallocate, ftruncate, sync, data (a write that is not
 *                      metadata: see is_data_write), read (of the backing
 *                      file) or lock (fcntl's record locks, OFD or not: as on
 *                      a file system without them; never recorded), and WHEN is
 *                        N      the Nth call of that kind (1-based) fails
 *                        N+     the Nth call and every later one fail
 *                        %N@S   each call fails with probability 1/N, drawn
 *                               from a generator seeded with S
 *                      ERRNO is a name (EIO, ENOSPC, EOPNOTSUPP, EDQUOT,
 *                      EROFS, ENOMEM, ENOSYS, EINTR, ENOLCK, EINVAL) or a
 *                      number.
 *   QED_SYSCALL_DELAY  comma-separated KIND:MICROSECONDS: sleep before each
 *                      such call (before taking the lock).
 *   QED_SYSCALL_COUNTS at exit, write there one line per KIND: "KIND CALLS
 *                      INJECTED" (calls counted as for QED_SYSCALL_FAIL, and
 *                      the failures injected into them)
 *   QED_SYSCALL_JITTER comma-separated KIND:PERCENT:MAX_MICROSECONDS: before
 *                      each such call, and again after it returned (after
 *                      the lock is released, so the caller's next steps are
 *                      late), sleep with probability PERCENT/100 for 1 to
 *                      MAX microseconds, drawn from one generator seeded
 *                      with QED_SYSCALL_JITTER_SEED (default 1). KIND as for
 *                      QED_SYSCALL_DELAY: write, fallocate, ftruncate, sync,
 *                      read.
 *
 * A seed fixes the sequence of draws, not the schedule: which call gets which
 * draw depends on the order the threads reach the generator. A run is
 * repeated by giving the same settings again; it takes the same decisions
 * in the same call order, which is likely, not certain, to give the same
 * interleaving.
 *
 * Ordering. One mutex is held across the real call and the appending of its
 * record, so the log order is the order in which the calls took effect, and a
 * record's t_start is later than the previous record's t_end. The harness
 * relies on both: a crash "between record k-1 and record k" is a moment when
 * exactly the calls before k had been made, and t_start of record k bounds
 * that moment from above (see harness.cpp). Taking a sequence number after
 * the call returns, without a lock, would not do: two overlapping writes
 * could be logged in the opposite order of their effect, and a write that
 * raced a sync could be logged before it without being covered by it.
 * Without a log (QED_SYSCALL_LOG unset) the lock is held only to count the
 * call and decide its failure, and the real calls overlap as they would
 * without the library: schedules are then the program's own.
 *
 * Tracked fds come from open/open64/openat/openat64/creat (and their
 * _FORTIFY_SOURCE variants), dup/dup2/dup3/fcntl(F_DUPFD*), and leave through
 * close/close_range/dup2 onto them. Not intercepted (the engine uses none of
 * them on the image): mmap, copy_file_range, sendfile, truncate(path), stdio;
 * on the backing file, reads other than pread and pread64.
 */
/* We define both foo and foo64; with 64-bit file offsets the headers would
 * rename foo to foo64 and the two definitions would collide. */
#undef _FILE_OFFSET_BITS
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "tests/syscall/syscall_record.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- configuration ---------------------------------------------------- */

enum fault_kind {
  K_WRITE,
  K_FALLOCATE,
  K_FTRUNCATE,
  K_SYNC,
  K_DATA,
  K_READ,
  K_LOCK,
  K_COUNT
};
static const char *const kind_names[K_COUNT] = {"write", "fallocate", "ftruncate", "sync",
                                                "data",  "read",      "lock"};

enum { WHEN_NTH, WHEN_FROM, WHEN_RANDOM };

struct fault_spec {
  int kind;
  int when;
  uint64_t n;     /* the call number, or the 1-in-N ratio */
  uint64_t rng;   /* WHEN_RANDOM: generator state */
  int err;
};

#define MAX_SPECS 16
static struct fault_spec specs[MAX_SPECS];
static int nspecs;
static unsigned delay_us[K_COUNT];
struct jitter_spec {
  unsigned percent;
  unsigned max_us;
};
static struct jitter_spec jitters[K_COUNT];
static char *watch_path;
static char *backing_path;
static int log_fd = -1;
static int log_data = 1;

/* Guarded by mu: the log, the call counters, the failure generators, and
 * every tracked-fd transition. `tracked` is also read without it (atomically)
 * so that untracked fds never touch the lock. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t seq;
static uint64_t calls[K_COUNT];
static uint64_t injected_calls[K_COUNT];
static char *counts_path;
#define MAX_FD 65536
enum { UNTRACKED = 0, TRACKED_IMAGE = 1, TRACKED_BACKING = 2 };
static _Atomic unsigned char tracked[MAX_FD];
/* Guarded by jitter_mu (taken alone, never with mu): the jitter generator. */
static pthread_mutex_t jitter_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t jitter_rng = 1;

/* ---- the real functions ----------------------------------------------- */

static void *real_fn(const char *name) {
  void *p = dlsym(RTLD_NEXT, name);
  if (!p) {
    fprintf(stderr, "qed_syscalls: no next definition of %s\n", name);
    abort();
  }
  return p;
}

/* REAL(name, type): a static pointer to the next definition of `name`,
 * resolved on first use (calls may arrive before our constructor runs). */
#define REAL(name, type)                                                   \
  static _Atomic(type) real_##name##_p;                                    \
  static type real_##name(void) {                                          \
    type p = atomic_load_explicit(&real_##name##_p, memory_order_acquire); \
    if (!p) {                                                              \
      void *v = real_fn(#name);                                            \
      memcpy(&p, &v, sizeof p); /* ISO C has no void* to function cast */ \
      atomic_store_explicit(&real_##name##_p, p, memory_order_release);    \
    }                                                                      \
    return p;                                                              \
  }

typedef int (*open_t)(const char *, int, ...);
typedef int (*openat_t)(int, const char *, int, ...);
typedef int (*open2_t)(const char *, int);
typedef int (*openat2_t)(int, const char *, int);
typedef int (*creat_t)(const char *, mode_t);
typedef int (*close_t)(int);
typedef int (*close_range_t)(unsigned, unsigned, int);
typedef int (*dup_t)(int);
typedef int (*dup2_t)(int, int);
typedef int (*dup3_t)(int, int, int);
typedef int (*fcntl_t)(int, int, ...);
typedef ssize_t (*pwrite_t)(int, const void *, size_t, off_t);
typedef ssize_t (*write_t)(int, const void *, size_t);
typedef ssize_t (*writev_t)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_t)(int, const struct iovec *, int, off_t);
typedef ssize_t (*pwritev2_t)(int, const struct iovec *, int, off_t, int);
typedef int (*fallocate_t)(int, int, off_t, off_t);
typedef int (*posix_fallocate_t)(int, off_t, off_t);
typedef int (*ftruncate_t)(int, off_t);
typedef int (*fsync_t)(int);
typedef int (*sync_file_range_t)(int, off_t, off_t, unsigned);
typedef ssize_t (*pread_t)(int, void *, size_t, off_t);

REAL(open, open_t)
REAL(open64, open_t)
REAL(openat, openat_t)
REAL(openat64, openat_t)
REAL(__open_2, open2_t)
REAL(__open64_2, open2_t)
REAL(__openat_2, openat2_t)
REAL(__openat64_2, openat2_t)
REAL(creat, creat_t)
REAL(creat64, creat_t)
REAL(close, close_t)
REAL(close_range, close_range_t)
REAL(dup, dup_t)
REAL(dup2, dup2_t)
REAL(dup3, dup3_t)
REAL(fcntl, fcntl_t)
REAL(fcntl64, fcntl_t)
REAL(pwrite, pwrite_t)
REAL(pwrite64, pwrite_t)
REAL(write, write_t)
REAL(writev, writev_t)
REAL(pwritev, pwritev_t)
REAL(pwritev64, pwritev_t)
REAL(pwritev2, pwritev2_t)
REAL(pwritev64v2, pwritev2_t)
REAL(fallocate, fallocate_t)
REAL(fallocate64, fallocate_t)
REAL(posix_fallocate, posix_fallocate_t)
REAL(posix_fallocate64, posix_fallocate_t)
REAL(ftruncate, ftruncate_t)
REAL(ftruncate64, ftruncate_t)
REAL(fsync, fsync_t)
REAL(fdatasync, fsync_t)
REAL(syncfs, fsync_t)
REAL(sync_file_range, sync_file_range_t)
REAL(pread, pread_t)
REAL(pread64, pread_t)

/* ---- set-up ------------------------------------------------------------ */

static void die(const char *what, const char *value) {
  fprintf(stderr, "qed_syscalls: %s: '%s'\n", what, value ? value : "");
  abort();
}

static int parse_kind(const char *s, size_t len) {
  for (int k = 0; k < K_COUNT; k++)
    if (strlen(kind_names[k]) == len && strncmp(s, kind_names[k], len) == 0)
      return k;
  return -1;
}

static int parse_errno(const char *s) {
  static const struct {
    const char *name;
    int value;
  } names[] = {{"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EOPNOTSUPP", EOPNOTSUPP},
               {"EDQUOT", EDQUOT}, {"EROFS", EROFS},   {"ENOMEM", ENOMEM},
               {"ENOSYS", ENOSYS}, {"EINTR", EINTR},   {"ENOLCK", ENOLCK},
               {"EINVAL", EINVAL}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(s, names[i].name) == 0)
      return names[i].value;
  char *end;
  long v = strtol(s, &end, 10);
  return *s && !*end && v > 0 ? (int)v : -1;
}

/* KIND:WHEN:ERRNO */
static void parse_fault(char *item) {
  char *c1 = strchr(item, ':');
  char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
  if (!c1 || !c2 || nspecs == MAX_SPECS)
    die("QED_SYSCALL_FAIL: expected KIND:WHEN:ERRNO", item);
  struct fault_spec *f = &specs[nspecs];
  f->kind = parse_kind(item, (size_t)(c1 - item));
  *c2 = '\0';
  const char *when = c1 + 1;
  char *end;
  if (*when == '%') {
    f->when = WHEN_RANDOM;
    f->n = strtoull(when + 1, &end, 10);
    if (*end != '@')
      die("QED_SYSCALL_FAIL: expected %N@SEED", when);
    f->rng = strtoull(end + 1, &end, 10);
  } else {
    f->n = strtoull(when, &end, 10);
    f->when = WHEN_NTH;
    if (*end == '+') {
      f->when = WHEN_FROM;
      end++;
    }
  }
  if (*end || f->n == 0 || f->kind < 0)
    die("QED_SYSCALL_FAIL: bad kind or call number", item);
  f->err = parse_errno(c2 + 1);
  if (f->err < 0)
    die("QED_SYSCALL_FAIL: unknown errno", c2 + 1);
  nspecs++;
}

/* KIND:MICROSECONDS */
static void parse_delay(char *item) {
  char *c = strchr(item, ':');
  int k = c ? parse_kind(item, (size_t)(c - item)) : -1;
  char *end;
  unsigned long us = c ? strtoul(c + 1, &end, 10) : 0;
  if (k < 0 || k == K_DATA || k == K_LOCK || !c || *end)
    die("QED_SYSCALL_DELAY: expected KIND:MICROSECONDS", item);
  delay_us[k] = (unsigned)us;
}

/* KIND:PERCENT:MAX_MICROSECONDS */
static void parse_jitter(char *item) {
  char *c1 = strchr(item, ':');
  char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
  int k = c1 ? parse_kind(item, (size_t)(c1 - item)) : -1;
  char *end1 = NULL, *end2 = NULL;
  unsigned long pct = c2 ? strtoul(c1 + 1, &end1, 10) : 0;
  unsigned long us = c2 ? strtoul(c2 + 1, &end2, 10) : 0;
  if (k < 0 || k == K_DATA || k == K_LOCK || !c2 || end1 != c2 || *end2 || pct > 100 ||
      us == 0 || us > 1000000)
    die("QED_SYSCALL_JITTER: expected KIND:PERCENT:MAX_MICROSECONDS", item);
  jitters[k].percent = (unsigned)pct;
  jitters[k].max_us = (unsigned)us;
}

/* A static copy, not strdup + free: under the ASan preload, freeing in this
 * constructor memory it allocated ended every process with "__lsan_unregister_
 * root_region(): region ... has not been registered" and exit status 97. */
static void parse_list(const char *env, void (*parse)(char *)) {
  static char copy[4096];
  const char *v = getenv(env);
  if (!v || !*v)
    return;
  if ((size_t)snprintf(copy, sizeof copy, "%s", v) >= sizeof copy)
    die("too long", env);
  char *save = NULL;
  for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save))
    parse(item);
}

__attribute__((constructor)) static void init(void) {
  const char *p = getenv("QED_SYSCALL_PATH");
  if (!p || !*p)
    return;  /* nothing to watch: a plain pass-through */
  watch_path = strdup(p);
  const char *d = getenv("QED_SYSCALL_DATA");
  log_data = !(d && strcmp(d, "0") == 0);
  parse_list("QED_SYSCALL_FAIL", parse_fault);
  parse_list("QED_SYSCALL_DELAY", parse_delay);
  parse_list("QED_SYSCALL_JITTER", parse_jitter);
  const char *js = getenv("QED_SYSCALL_JITTER_SEED");
  if (js && *js)
    jitter_rng = strtoull(js, NULL, 10);
  const char *cp = getenv("QED_SYSCALL_COUNTS");
  if (cp && *cp)
    counts_path = strdup(cp);
  const char *b = getenv("QED_SYSCALL_BACKING");
  if (b && *b)
    backing_path = strdup(b);
  const char *l = getenv("QED_SYSCALL_LOG");
  if (l && *l) {
    log_fd = real_open()(l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0)
      die("cannot open QED_SYSCALL_LOG", l);
  }
}

/* ---- helpers ----------------------------------------------------------- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* UNTRACKED, TRACKED_IMAGE or TRACKED_BACKING. */
static int tracked_as(int fd) {
  return fd >= 0 && fd < MAX_FD ? atomic_load_explicit(&tracked[fd], memory_order_acquire)
                                : UNTRACKED;
}

/* The image: its changes are logged, failed and delayed. */
static int is_tracked(int fd) { return tracked_as(fd) == TRACKED_IMAGE; }

static void set_tracked(int fd, int as) {
  if (fd >= 0 && fd < MAX_FD)
    atomic_store_explicit(&tracked[fd], (unsigned char)as, memory_order_release);
  else if (as)
    fprintf(stderr, "qed_syscalls: fd %d is beyond %d: not tracked\n", fd, MAX_FD);
}

static void write_all(const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t r = real_write()(log_fd, p, n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      perror("qed_syscalls: writing the log");
      abort();
    }
    p += r;
    n -= (size_t)r;
  }
}

/* Appends one record (with the first `data_len` bytes of iov). mu held. */
static void append(struct qsys_record *r, const struct iovec *iov, int iovcnt,
                   uint64_t data_len) {
  r->magic = QSYS_MAGIC;
  r->seq = seq++;
  if (!log_data)
    data_len = 0;
  r->data_len = data_len;
  if (log_fd < 0)
    return;
  write_all(r, sizeof *r);
  for (int i = 0; i < iovcnt && data_len > 0; i++) {
    size_t n = iov[i].iov_len < data_len ? iov[i].iov_len : (size_t)data_len;
    write_all(iov[i].iov_base, n);
    data_len -= n;
  }
}

static uint64_t splitmix(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Counts a call of `kind`; returns the errno to inject, or 0. mu held. */
static int injection(int kind) {
  const uint64_t n = ++calls[kind];
  int err = 0;
  for (int i = 0; i < nspecs; i++) {
    struct fault_spec *f = &specs[i];
    if (f->kind != kind)
      continue;
    int hit = f->when == WHEN_NTH ? n == f->n
              : f->when == WHEN_FROM ? n >= f->n
                                     : splitmix(&f->rng) % f->n == 0;
    if (hit && !err)
      err = f->err;
  }
  if (err)
    injected_calls[kind]++;
  return err;
}

static void sleep_us(unsigned us) {
  struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* The jitter of one side (before or after) of a call of `kind`. Never called
 * with mu held: a sleeping thread must not hold up the others' calls. */
static void jitter(int kind) {
  const struct jitter_spec *j = &jitters[kind];
  if (!j->percent)
    return;
  pthread_mutex_lock(&jitter_mu);
  const uint64_t draw = splitmix(&jitter_rng);
  pthread_mutex_unlock(&jitter_mu);
  if (draw % 100 < j->percent)
    sleep_us(1 + (unsigned)((draw >> 32) % j->max_us));
}

/* Before a call of `kind`: the fixed delay, then the jitter. */
static void delay(int kind) {
  if (delay_us[kind])
    sleep_us(delay_us[kind]);
  jitter(kind);
}

/* Whether a freshly opened fd is the file at `path`. */
static int same_file(int fd, const char *path) {
  if (!path || fd < 0)
    return 0;
  struct stat a, b;
  return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

static int is_watched(int fd) { return same_file(fd, watch_path); }

/* A data write, as opposed to one of the engine's metadata writes: its first
 * 8 bytes (all of them, if fewer) hold no zero byte. Every metadata write
 * starts with one: the header with "QED\0", an L1 or L2 sector with an entry,
 * a little-endian offset below 2^56. Data whose first bytes are zero are not
 * data writes to this test; the harness writes no zero bytes. */
static int is_data_write(const struct iovec *iov, int iovcnt) {
  size_t seen = 0;
  for (int i = 0; i < iovcnt && seen < 8; i++) {
    const unsigned char *p = iov[i].iov_base;
    for (size_t j = 0; j < iov[i].iov_len && seen < 8; j++, seen++)
      if (p[j] == 0)
        return 0;
  }
  return seen > 0;
}

/* After a successful open under mu: track the fd, record it (and O_TRUNC as
 * a truncation to 0). The backing file is tracked, never recorded. */
static void opened(int fd, int flags) {
  if (!is_watched(fd)) {
    if (same_file(fd, backing_path))
      set_tracked(fd, TRACKED_BACKING);
    return;
  }
  set_tracked(fd, TRACKED_IMAGE);
  const uint64_t t = now_ns();
  struct qsys_record r = {0};
  r.kind = QSYS_OPEN;
  r.call = QSYS_CALL_OPEN;
  r.t_start = r.t_end = t;
  r.fd = fd;
  r.mode = (uint32_t)flags;
  append(&r, NULL, 0, 0);
  if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY) {
    struct qsys_record tr = r;
    tr.kind = QSYS_TRUNCATE;
    tr.offset = 0;
    append(&tr, NULL, 0, 0);
  }
}

static void closed(int fd) {
  const int was = tracked_as(fd);
  set_tracked(fd, UNTRACKED);
  if (was != TRACKED_IMAGE)
    return;
  struct qsys_record r = {0};
  r.kind = QSYS_CLOSE;
  r.call = QSYS_CALL_CLOSE;
  r.t_start = r.t_end = now_ns();
  r.fd = fd;
  append(&r, NULL, 0, 0);
}

/* After the real open (mu held across both). */
static void open_common(int fd, int flags) {
  if (fd >= 0)
    opened(fd, flags);
}

static mode_t mode_arg(int flags, va_list ap) {
  return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

/* ---- open / close / dup ------------------------------------------------- */

#define OPEN_WRAPPER(name)                                      \
  EXPORT int name(const char *path, int flags, ...) {           \
    va_list ap;                                                 \
    va_start(ap, flags);                                        \
    mode_t m = mode_arg(flags, ap);                             \
    va_end(ap);                                                 \
    pthread_mutex_lock(&mu);                                    \
    int fd = real_##name()(path, flags, m);                     \
    int e = errno;                                              \
    open_common(fd, flags);                                     \
    pthread_mutex_unlock(&mu);                                  \
    errno = e;                                                  \
    return fd;                                                  \
  }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

#define OPENAT_WRAPPER(name)                                    \
  EXPORT int name(int dirfd, const char *path, int flags, ...) { \
    va_list ap;                                                 \
    va_start(ap, flags);                                        \
    mode_t m = mode_arg(flags, ap);                             \
    va_end(ap);                                                 \
    pthread_mutex_lock(&mu);                                    \
    int fd = real_##name()(dirfd, path, flags, m);              \
    int e = errno;                                              \
    open_common(fd, flags);                                     \
    pthread_mutex_unlock(&mu);                                  \
    errno = e;                                                  \
    return fd;                                                  \
  }
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

#define OPEN2_WRAPPER(name)                                     \
  EXPORT int name(const char *path, int flags) {                \
    pthread_mutex_lock(&mu);                                    \
    int fd = real_##name()(path, flags);                        \
    int e = errno;                                              \
    open_common(fd, flags);                                     \
    pthread_mutex_unlock(&mu);                                  \
    errno = e;                                                  \
    return fd;                                                  \
  }
OPEN2_WRAPPER(__open_2)
OPEN2_WRAPPER(__open64_2)

#define OPENAT2_WRAPPER(name)                                   \
  EXPORT int name(int dirfd, const char *path, int flags) {     \
    pthread_mutex_lock(&mu);                                    \
    int fd = real_##name()(dirfd, path, flags);                 \
    int e = errno;                                              \
    open_common(fd, flags);                                     \
    pthread_mutex_unlock(&mu);                                  \
    errno = e;                                                  \
    return fd;                                                  \
  }
OPENAT2_WRAPPER(__openat_2)
OPENAT2_WRAPPER(__openat64_2)

#define CREAT_WRAPPER(name)                                     \
  EXPORT int name(const char *path, mode_t m) {                 \
    pthread_mutex_lock(&mu);                                    \
    int fd = real_##name()(path, m);                            \
    int e = errno;                                              \
    open_common(fd, O_CREAT | O_WRONLY | O_TRUNC);              \
    pthread_mutex_unlock(&mu);                                  \
    errno = e;                                                  \
    return fd;                                                  \
  }
CREAT_WRAPPER(creat)
CREAT_WRAPPER(creat64)

EXPORT int close(int fd) {
  if (!tracked_as(fd))
    return real_close()(fd);
  pthread_mutex_lock(&mu);
  int r = real_close()(fd);
  int e = errno;
  closed(fd);  /* Linux releases the fd even when close fails */
  pthread_mutex_unlock(&mu);
  errno = e;
  return r;
}

EXPORT int close_range(unsigned first, unsigned last, int flags) {
  pthread_mutex_lock(&mu);
  int r = real_close_range()(first, last, flags);
  int e = errno;
  if (r == 0 && !(flags & CLOSE_RANGE_CLOEXEC))
    for (unsigned fd = first; fd <= last && fd < MAX_FD; fd++)
      if (tracked_as((int)fd))
        closed((int)fd);
  pthread_mutex_unlock(&mu);
  errno = e;
  return r;
}

/* After dup-like calls under mu: newfd inherits oldfd's tracking. */
static void duplicated(int oldfd, int newfd) {
  if (newfd < 0 || newfd == oldfd)
    return;
  if (tracked_as(newfd))
    closed(newfd);  /* dup2/dup3 closed it */
  if (tracked_as(oldfd) == TRACKED_BACKING)
    set_tracked(newfd, TRACKED_BACKING);
  if (is_tracked(oldfd)) {
    set_tracked(newfd, TRACKED_IMAGE);
    struct qsys_record r = {0};
    r.kind = QSYS_OPEN;
    r.call = QSYS_CALL_DUP;
    r.t_start = r.t_end = now_ns();
    r.fd = newfd;
    append(&r, NULL, 0, 0);
  }
}

EXPORT int dup(int oldfd) {
  if (!tracked_as(oldfd))
    return real_dup()(oldfd);
  pthread_mutex_lock(&mu);
  int r = real_dup()(oldfd);
  int e = errno;
  duplicated(oldfd, r);
  pthread_mutex_unlock(&mu);
  errno = e;
  return r;
}

EXPORT int dup2(int oldfd, int newfd) {
  if (!tracked_as(oldfd) && !tracked_as(newfd))
    return real_dup2()(oldfd, newfd);
  pthread_mutex_lock(&mu);
  int r = real_dup2()(oldfd, newfd);
  int e = errno;
  duplicated(oldfd, r);
  pthread_mutex_unlock(&mu);
  errno = e;
  return r;
}

EXPORT int dup3(int oldfd, int newfd, int flags) {
  if (!tracked_as(oldfd) && !tracked_as(newfd))
    return real_dup3()(oldfd, newfd, flags);
  pthread_mutex_lock(&mu);
  int r = real_dup3()(oldfd, newfd, flags);
  int e = errno;
  duplicated(oldfd, r);
  pthread_mutex_unlock(&mu);
  errno = e;
  return r;
}

/* fcntl's third argument is an int or a pointer; like glibc, pass it on as a
 * pointer-sized value. Only F_DUPFD and F_DUPFD_CLOEXEC concern us. */
static int is_lock_cmd(int cmd) {
  return cmd == F_SETLK || cmd == F_SETLKW || cmd == F_GETLK || cmd == F_OFD_SETLK ||
         cmd == F_OFD_SETLKW || cmd == F_OFD_GETLK;
}

static int fcntl_common(fcntl_t real, int fd, int cmd, void *arg) {
  if (is_tracked(fd) && is_lock_cmd(cmd)) {
    pthread_mutex_lock(&mu);
    int err = injection(K_LOCK);
    pthread_mutex_unlock(&mu);
    if (err) {
      errno = err;
      return -1;
    }
    return real(fd, cmd, arg);
  }
  if (!tracked_as(fd) || (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC))
    return real(fd, cmd, arg);
  pthread_mutex_lock(&mu);
  int r = real(fd, cmd, arg);
  int e = errno;
  duplicated(fd, r);
  pthread_mutex_unlock(&mu);
  errno = e;
  return r;
}

EXPORT int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  return fcntl_common(real_fcntl(), fd, cmd, arg);
}

EXPORT int fcntl64(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  return fcntl_common(real_fcntl64(), fd, cmd, arg);
}

/* ---- writes ------------------------------------------------------------- */

/* The file position a non-positional write on fd will use. mu held. */
static off_t current_position(int fd) {
  int fl = real_fcntl()(fd, F_GETFL, 0);
  if (fl >= 0 && (fl & O_APPEND)) {
    struct stat st;
    return fstat(fd, &st) == 0 ? st.st_size : -1;
  }
  return lseek(fd, 0, SEEK_CUR);
}

/* Runs one write-like call on a tracked fd: injection, the real call, the
 * record. `call_real` is given the iovec it must write. */
struct write_call {
  int fd;
  int call;
  const struct iovec *iov;
  int iovcnt;
  off_t offset;  /* -1: the file position */
  ssize_t (*run)(const struct write_call *);
  union {
    pwrite_t pwrite;
    write_t write;
    writev_t writev;
    pwritev_t pwritev;
    pwritev2_t pwritev2;
  } fn;
  int flags;  /* pwritev2 */
};

static ssize_t tracked_write(const struct write_call *c) {
  delay(K_WRITE);
  pthread_mutex_lock(&mu);
  /* With a log, calls are serialised (see Ordering above). */
  const int serialised = log_fd >= 0;
  struct qsys_record r = {0};
  r.kind = QSYS_WRITE;
  r.call = (uint16_t)c->call;
  r.fd = c->fd;
  r.t_start = now_ns();
  off_t off = c->offset >= 0 ? c->offset : current_position(c->fd);
  r.offset = off < 0 ? 0 : (uint64_t)off;
  int err = injection(K_WRITE);
  if (is_data_write(c->iov, c->iovcnt)) {
    const int data_err = injection(K_DATA);
    if (!err)
      err = data_err;
  }
  if (!serialised)
    pthread_mutex_unlock(&mu);
  ssize_t n;
  if (err) {
    r.injected = 1;
    n = -1;
  } else {
    n = c->run(c);
    err = n < 0 ? errno : 0;
  }
  if (serialised) {
    r.t_end = now_ns();
    r.err = err;
    r.length = n > 0 ? (uint64_t)n : 0;
    append(&r, c->iov, c->iovcnt, r.length);
    pthread_mutex_unlock(&mu);
  }
  jitter(K_WRITE);
  errno = err;
  return n;
}

static ssize_t run_pwrite(const struct write_call *c) {
  return c->fn.pwrite(c->fd, c->iov[0].iov_base, c->iov[0].iov_len, c->offset);
}
static ssize_t run_write(const struct write_call *c) {
  return c->fn.write(c->fd, c->iov[0].iov_base, c->iov[0].iov_len);
}
static ssize_t run_writev(const struct write_call *c) {
  return c->fn.writev(c->fd, c->iov, c->iovcnt);
}
static ssize_t run_pwritev(const struct write_call *c) {
  return c->fn.pwritev(c->fd, c->iov, c->iovcnt, c->offset);
}
static ssize_t run_pwritev2(const struct write_call *c) {
  return c->fn.pwritev2(c->fd, c->iov, c->iovcnt, c->offset, c->flags);
}

#define PWRITE_WRAPPER(name)                                              \
  EXPORT ssize_t name(int fd, const void *buf, size_t count, off_t off) { \
    if (!is_tracked(fd))                                                  \
      return real_##name()(fd, buf, count, off);                          \
    struct iovec iov = {(void *)buf, count};                              \
    struct write_call c = {0};                                            \
    c.fd = fd;                                                            \
    c.call = QSYS_CALL_PWRITE;                                            \
    c.iov = &iov;                                                         \
    c.iovcnt = 1;                                                         \
    c.offset = off;                                                       \
    c.run = run_pwrite;                                                   \
    c.fn.pwrite = real_##name();                                          \
    return tracked_write(&c);                                             \
  }
PWRITE_WRAPPER(pwrite)
PWRITE_WRAPPER(pwrite64)

EXPORT ssize_t write(int fd, const void *buf, size_t count) {
  if (!is_tracked(fd))
    return real_write()(fd, buf, count);
  struct iovec iov = {(void *)buf, count};
  struct write_call c = {0};
  c.fd = fd;
  c.call = QSYS_CALL_WRITE;
  c.iov = &iov;
  c.iovcnt = 1;
  c.offset = -1;
  c.run = run_write;
  c.fn.write = real_write();
  return tracked_write(&c);
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
  if (!is_tracked(fd))
    return real_writev()(fd, iov, iovcnt);
  struct write_call c = {0};
  c.fd = fd;
  c.call = QSYS_CALL_WRITEV;
  c.iov = iov;
  c.iovcnt = iovcnt;
  c.offset = -1;
  c.run = run_writev;
  c.fn.writev = real_writev();
  return tracked_write(&c);
}

#define PWRITEV_WRAPPER(name)                                                   \
  EXPORT ssize_t name(int fd, const struct iovec *iov, int iovcnt, off_t off) { \
    if (!is_tracked(fd))                                                        \
      return real_##name()(fd, iov, iovcnt, off);                               \
    struct write_call c = {0};                                                  \
    c.fd = fd;                                                                  \
    c.call = QSYS_CALL_PWRITEV;                                                 \
    c.iov = iov;                                                                \
    c.iovcnt = iovcnt;                                                          \
    c.offset = off;                                                             \
    c.run = run_pwritev;                                                        \
    c.fn.pwritev = real_##name();                                               \
    return tracked_write(&c);                                                   \
  }
PWRITEV_WRAPPER(pwritev)
PWRITEV_WRAPPER(pwritev64)

#define PWRITEV2_WRAPPER(name)                                                \
  EXPORT ssize_t name(int fd, const struct iovec *iov, int iovcnt, off_t off, \
                      int flags) {                                            \
    if (!is_tracked(fd))                                                      \
      return real_##name()(fd, iov, iovcnt, off, flags);                      \
    struct write_call c = {0};                                                \
    c.fd = fd;                                                                \
    c.call = QSYS_CALL_PWRITEV;                                               \
    c.iov = iov;                                                              \
    c.iovcnt = iovcnt;                                                        \
    c.offset = off;                                                           \
    c.run = run_pwritev2;                                                     \
    c.fn.pwritev2 = real_##name();                                            \
    c.flags = flags;                                                          \
    return tracked_write(&c);                                                 \
  }
PWRITEV2_WRAPPER(pwritev2)
PWRITEV2_WRAPPER(pwritev64v2)

/* ---- fallocate / ftruncate ----------------------------------------------- */

/* One size or allocation change on a tracked fd. */
struct space_call {
  int kind;  /* enum fault_kind */
  struct qsys_record r;
  int posix;  /* posix_fallocate: returns the error number, errno untouched */
  fallocate_t fallocate;
  posix_fallocate_t posix_fallocate;
  ftruncate_t ftruncate;
};

static int tracked_space(struct space_call *c) {
  delay(c->kind);
  pthread_mutex_lock(&mu);
  const int serialised = log_fd >= 0;
  struct qsys_record *r = &c->r;
  r->t_start = now_ns();
  int err = injection(c->kind);
  if (!serialised)
    pthread_mutex_unlock(&mu);
  int ret;
  if (err) {
    r->injected = 1;
    ret = c->posix ? err : -1;
  } else {
    if (c->fallocate)
      ret = c->fallocate(r->fd, (int)r->mode, (off_t)r->offset, (off_t)r->length);
    else if (c->posix_fallocate)
      ret = c->posix_fallocate(r->fd, (off_t)r->offset, (off_t)r->length);
    else
      ret = c->ftruncate(r->fd, (off_t)r->offset);
    err = c->posix ? ret : (ret < 0 ? errno : 0);
  }
  if (serialised) {
    r->t_end = now_ns();
    r->err = err;
    append(r, NULL, 0, 0);
    pthread_mutex_unlock(&mu);
  }
  jitter(c->kind);
  if (!c->posix)
    errno = err;
  return ret;
}

static struct space_call space_call(int kind, int rkind, int call, int fd, int mode,
                                    off_t off, off_t len) {
  struct space_call c;
  memset(&c, 0, sizeof c);
  c.kind = kind;
  c.r.kind = (uint16_t)rkind;
  c.r.call = (uint16_t)call;
  c.r.fd = fd;
  c.r.mode = (uint32_t)mode;
  c.r.offset = (uint64_t)off;
  c.r.length = (uint64_t)len;
  return c;
}

#define FALLOCATE_WRAPPER(name)                                                  \
  EXPORT int name(int fd, int mode, off_t off, off_t len) {                      \
    if (!is_tracked(fd))                                                         \
      return real_##name()(fd, mode, off, len);                                  \
    struct space_call c =                                                        \
        space_call(K_FALLOCATE, QSYS_FALLOCATE, QSYS_CALL_FALLOCATE, fd, mode, off, len); \
    c.fallocate = real_##name();                                                 \
    return tracked_space(&c);                                                    \
  }
FALLOCATE_WRAPPER(fallocate)
FALLOCATE_WRAPPER(fallocate64)

#define POSIX_FALLOCATE_WRAPPER(name)                                              \
  EXPORT int name(int fd, off_t off, off_t len) {                                  \
    if (!is_tracked(fd))                                                           \
      return real_##name()(fd, off, len);                                          \
    struct space_call c =                                                          \
        space_call(K_FALLOCATE, QSYS_FALLOCATE, QSYS_CALL_POSIX_FALLOCATE, fd, 0, off, len); \
    c.posix = 1;                                                                   \
    c.posix_fallocate = real_##name();                                             \
    return tracked_space(&c);                                                      \
  }
POSIX_FALLOCATE_WRAPPER(posix_fallocate)
POSIX_FALLOCATE_WRAPPER(posix_fallocate64)

#define FTRUNCATE_WRAPPER(name)                                                 \
  EXPORT int name(int fd, off_t size) {                                         \
    if (!is_tracked(fd))                                                        \
      return real_##name()(fd, size);                                           \
    struct space_call c =                                                       \
        space_call(K_FTRUNCATE, QSYS_TRUNCATE, QSYS_CALL_FTRUNCATE, fd, 0, size, 0); \
    c.ftruncate = real_##name();                                                \
    return tracked_space(&c);                                                   \
  }
FTRUNCATE_WRAPPER(ftruncate)
FTRUNCATE_WRAPPER(ftruncate64)

/* ---- syncs -------------------------------------------------------------- */

static int tracked_sync(int call, int fd, int (*fn)(int)) {
  delay(K_SYNC);
  pthread_mutex_lock(&mu);
  const int serialised = log_fd >= 0;
  struct qsys_record r = {0};
  r.kind = QSYS_SYNC;
  r.call = (uint16_t)call;
  r.fd = fd;
  r.t_start = now_ns();
  int err = injection(K_SYNC);
  if (!serialised)
    pthread_mutex_unlock(&mu);
  int ret;
  if (err) {
    r.injected = 1;
    ret = -1;
  } else {
    ret = fn(fd);
    err = ret < 0 ? errno : 0;
  }
  if (serialised) {
    r.t_end = now_ns();
    r.err = err;
    append(&r, NULL, 0, 0);
    pthread_mutex_unlock(&mu);
  }
  jitter(K_SYNC);
  errno = err;
  return ret;
}

EXPORT int fsync(int fd) {
  if (!is_tracked(fd))
    return real_fsync()(fd);
  return tracked_sync(QSYS_CALL_FSYNC, fd, real_fsync());
}

EXPORT int fdatasync(int fd) {
  if (!is_tracked(fd))
    return real_fdatasync()(fd);
  return tracked_sync(QSYS_CALL_FDATASYNC, fd, real_fdatasync());
}

EXPORT int syncfs(int fd) {
  if (!is_tracked(fd))
    return real_syncfs()(fd);
  return tracked_sync(QSYS_CALL_SYNCFS, fd, real_syncfs());
}

/* sync_file_range flushes data pages only, with no guarantee about metadata:
 * logged, counted as a sync for injection, but never a barrier. */
EXPORT int sync_file_range(int fd, off_t off, off_t n, unsigned flags) {
  if (!is_tracked(fd))
    return real_sync_file_range()(fd, off, n, flags);
  delay(K_SYNC);
  pthread_mutex_lock(&mu);
  struct qsys_record r = {0};
  r.kind = QSYS_SYNC;
  r.call = QSYS_CALL_SYNC_FILE_RANGE;
  r.fd = fd;
  r.mode = flags;
  r.offset = (uint64_t)off;
  r.length = (uint64_t)n;
  r.t_start = now_ns();
  int err = injection(K_SYNC);
  const int serialised = log_fd >= 0;
  if (!serialised)
    pthread_mutex_unlock(&mu);
  int ret;
  if (err) {
    r.injected = 1;
    ret = -1;
  } else {
    ret = real_sync_file_range()(fd, off, n, flags);
    err = ret < 0 ? errno : 0;
  }
  if (serialised) {
    r.t_end = now_ns();
    r.err = err;
    append(&r, NULL, 0, 0);
    pthread_mutex_unlock(&mu);
  }
  jitter(K_SYNC);
  errno = err;
  return ret;
}

/* ---- reads of the backing file -------------------------------------------- */

/* Reads are never logged (they change nothing); they may fail (KIND read)
 * and be delayed like the image's calls. */
static ssize_t tracked_read(int fd, void *buf, size_t count, off_t off, pread_t fn) {
  delay(K_READ);
  pthread_mutex_lock(&mu);
  const int err = injection(K_READ);
  pthread_mutex_unlock(&mu);
  ssize_t n = -1;
  int e = err;
  if (!err) {
    n = fn(fd, buf, count, off);
    e = n < 0 ? errno : 0;
  }
  jitter(K_READ);
  errno = e;
  return n;
}

#define PREAD_WRAPPER(name)                                              \
  EXPORT ssize_t name(int fd, void *buf, size_t count, off_t off) {      \
    if (tracked_as(fd) != TRACKED_BACKING)                               \
      return real_##name()(fd, buf, count, off);                         \
    return tracked_read(fd, buf, count, off, real_##name());             \
  }
PREAD_WRAPPER(pread)
PREAD_WRAPPER(pread64)

/* ---- at exit -------------------------------------------------------------- */

__attribute__((destructor)) static void write_counts(void) {
  if (!counts_path)
    return;
  int fd = real_open()(counts_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return;
  pthread_mutex_lock(&mu);
  char line[128];
  for (int k = 0; k < K_COUNT; k++) {
    int n = snprintf(line, sizeof line, "%s %llu %llu\n", kind_names[k],
                     (unsigned long long)calls[k], (unsigned long long)injected_calls[k]);
    if (n > 0)
      (void)!real_write()(fd, line, (size_t)n);
  }
  pthread_mutex_unlock(&mu);
  real_close()(fd);
}
