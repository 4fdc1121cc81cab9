/* The log written by the preload library (qed_syscalls.c) and read by the
 * harness (syscall_log.cpp). A C header, so both sides share one definition.
 *
 * The log is a sequence of records, each a fixed header followed by
 * `data_len` bytes (the bytes a write stored). Both sides run on the same
 * machine, so fields are in native byte order; `magic` catches a mismatch.
 * Records appear in the order the calls took effect: the preload holds one
 * lock across the real call and the append of its record.
 */
#ifndef QED_SYSCALL_RECORD_H
#define QED_SYSCALL_RECORD_H

#include <stdint.h>

#define QSYS_MAGIC 0x53595351u /* "QSYS" */

/* What a record is. */
enum qsys_kind {
  QSYS_OPEN = 1,      /* the image was opened: fd, mode = open flags */
  QSYS_CLOSE = 2,     /* a tracked fd was closed */
  QSYS_WRITE = 3,     /* offset, length = bytes stored; data follows */
  QSYS_FALLOCATE = 4, /* mode = fallocate mode, offset, length */
  QSYS_TRUNCATE = 5,  /* offset = the new size (also open with O_TRUNC) */
  QSYS_SYNC = 6,      /* call says which: only fsync/fdatasync/syncfs are barriers */
};

/* Which libc function made the record. */
enum qsys_call {
  QSYS_CALL_OPEN = 1,
  QSYS_CALL_CLOSE,
  QSYS_CALL_DUP,
  QSYS_CALL_PWRITE,
  QSYS_CALL_PWRITEV,
  QSYS_CALL_WRITE,
  QSYS_CALL_WRITEV,
  QSYS_CALL_FALLOCATE,
  QSYS_CALL_POSIX_FALLOCATE,
  QSYS_CALL_FTRUNCATE,
  QSYS_CALL_FDATASYNC,
  QSYS_CALL_FSYNC,
  QSYS_CALL_SYNC_FILE_RANGE,
  QSYS_CALL_SYNCFS,
};

struct qsys_record {
  uint32_t magic;     /* QSYS_MAGIC */
  uint16_t kind;      /* enum qsys_kind */
  uint16_t call;      /* enum qsys_call */
  uint64_t seq;       /* 0, 1, 2, ... in log order */
  uint64_t t_start;   /* CLOCK_MONOTONIC ns, taken under the lock before the call */
  uint64_t t_end;     /* CLOCK_MONOTONIC ns, after the call returned */
  int32_t fd;
  int32_t err;        /* 0 if the call succeeded, else its errno */
  uint32_t injected;  /* 1 if the failure was injected (the real call was not made) */
  uint32_t mode;      /* fallocate mode, sync_file_range flags, open flags */
  uint64_t offset;
  uint64_t length;
  uint64_t data_len;  /* bytes following this header */
};

#endif
