/* vd's C API: open a virtual disk (a chain of QCOW2 / QCOW / LUKS / raw images) and do I/O on
 * it asynchronously from C, or from any language with a C FFI. Plain C99; no C++ types.
 *
 * ---- Objects ------------------------------------------------------------------------------
 *
 * vd_context  An executor thread (running vd's event loop) plus a pool of I/O threads that run
 *             the blocking system calls. One context hosts any number of disks.
 * vd_disk     One open disk: the top image and its backing chain, seen as one virtual disk.
 *             A handle stays valid from vd_disk_open until vd_disk_free, also after
 *             vd_disk_close (requests then fail with VD_E_CLOSED).
 *
 * ---- Threading contract -------------------------------------------------------------------
 *
 * - Any thread may call any vd_disk function, also several threads at once on one disk. The
 *   C layer posts every request onto the context's executor thread, where all of vd's work on
 *   the disk happens (vd's rule: an image belongs to one executor).
 * - Callbacks run on the context's executor thread, never inside the call that issued the
 *   request. A callback may issue new requests (on any disk). It should return quickly:
 *   while it runs, no other request of that context makes progress.
 * - Asynchronous calls return VD_OK when the request was accepted: its callback then runs
 *   exactly once. Any other return value means the request was refused and its callback
 *   never runs.
 * - Synchronous calls (vd_disk_open, vd_disk_close, vd_disk_free, vd_context_free and the
 *   blocking vd_disk_pread / vd_disk_pwrite / vd_disk_fsync) wait for the executor thread, so
 *   they must not be called from inside a callback (from any context's executor thread).
 *   That is detected: they return VD_E_IN_CALLBACK and do nothing.
 * - vd_disk_open and vd_disk_close run on the executor and block it (and so every disk of
 *   that context) while they read or write metadata.
 * - Property getters (vd_disk_size, vd_disk_read_only, vd_disk_pchs, vd_disk_lchs,
 *   vd_disk_parent_filename, vd_disk_depth) return values captured at open. They never wait
 *   and may be called from anywhere, callbacks included, until vd_disk_free.
 * - Buffers passed to asynchronous calls must stay valid until their callback has run.
 *
 * ---- Errors -------------------------------------------------------------------------------
 *
 * Functions return an int: VD_OK (0) or a vd_errc code, which the callbacks also receive.
 * After a failure, vd_last_error_message() and vd_last_errno() on the same thread tell more:
 * they are set by a failing call on the calling thread, and on the executor thread just
 * before a callback that receives an error runs. Successful calls leave them unchanged.
 */
#ifndef VD_VD_H
#define VD_VD_H

#include <stddef.h>
#include <stdint.h>

#include "vd/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The library version, as in the CMake project() (kept in step by the capi test). */
#define VD_VERSION_MAJOR 0
#define VD_VERSION_MINOR 1
#define VD_VERSION_PATCH 0
#define VD_VERSION_NUMBER (VD_VERSION_MAJOR * 10000 + VD_VERSION_MINOR * 100 + VD_VERSION_PATCH)

/* "MAJOR.MINOR.PATCH" of the library linked in (may differ from the header's macros). */
VD_API const char* vd_version(void);
/* MAJOR * 10000 + MINOR * 100 + PATCH of the library linked in. */
VD_API int vd_version_number(void);

/* ---- Error codes ----------------------------------------------------------------------- */

/* 1..17 are vd::Errc (include/vd/error.h) with the same values; vd may append kinds there,
 * which then reach C callers as is (vd_strerror names them "unknown error"). Codes of the C
 * layer itself start at 1000. */
typedef enum vd_errc {
  VD_OK = 0,
  VD_E_CORRUPT = 1,           /* on-disk structures are inconsistent */
  VD_E_NOT_SUPPORTED = 2,     /* valid image using a feature this build does not implement */
  VD_E_IO = 3,                /* the storage failed (see vd_last_errno) */
  VD_E_READ_ONLY = 4,         /* write to a disk opened read-only */
  VD_E_NOT_ALLOCATED = 5,     /* range not held by an image (internal to vd) */
  VD_E_INVALID_ARGUMENT = 6,  /* bad offset, size, option or NULL pointer */
  VD_E_NOT_FOUND = 7,         /* file, parent, snapshot or format missing */
  VD_E_WRONG_FORMAT = 8,      /* file is not in the requested format */
  VD_E_WRONG_PASSPHRASE = 9,  /* the passphrase did not unlock the image */
  VD_E_TOO_LARGE = 10,        /* a size beyond what the format allows */
  VD_E_OUT_OF_RANGE = 11,     /* access beyond the end of the disk */
  VD_E_PERMISSION = 12,       /* refused by policy */
  VD_E_BUSY = 13,             /* image locked or in use; context still has disks */
  VD_E_CANCELED = 14,
  VD_E_EXISTS = 15,
  VD_E_NO_SPACE = 16,
  VD_E_INTERNAL = 17,         /* a broken invariant inside vd; always a bug */

  VD_E_CLOSED = 1000,         /* the disk is closed, or its close has started */
  VD_E_IN_CALLBACK = 1001,    /* a synchronous call made from an executor thread */
  VD_E_NO_MEMORY = 1002       /* allocation failed (or a thread could not be started) */
} vd_errc;

/* A short static description of a code ("unknown error" for codes it does not know). */
VD_API const char* vd_strerror(int code);
/* The full message of the last failure seen on this thread ("" if none). The pointer stays
 * valid until the next vd call on this thread. */
VD_API const char* vd_last_error_message(void);
/* The errno of the system call behind the last failure on this thread; 0 if there was none. */
VD_API int vd_last_errno(void);

/* ---- Context --------------------------------------------------------------------------- */

typedef struct vd_context vd_context;

/* Starts an executor thread and `io_threads` I/O threads (0: a default from the hardware). */
VD_API int vd_context_new(unsigned io_threads, vd_context** out);
/* Stops the threads and frees the context. Every disk of it must have been freed with
 * vd_disk_free first (else VD_E_BUSY and nothing happens). NULL is accepted. */
VD_API int vd_context_free(vd_context* ctx);

/* ---- Opening and closing --------------------------------------------------------------- */

typedef struct vd_disk vd_disk;

enum {
  VD_OPEN_READ_ONLY = 1u << 0,  /* open the top read-only (parents always are) */
  VD_OPEN_NO_BACKING = 1u << 1  /* open the top image alone, without its backing chain */
};

/* Zero-initialise, then set what you need: all zeros opens read-write, probing the format. */
typedef struct vd_open_options {
  unsigned flags;          /* VD_OPEN_* */
  const char* format;      /* format of the top image ("qcow2", "raw", ...); NULL: probe */
  const char* passphrase;  /* for encrypted images; NULL: none */
  uint64_t cache_bytes;    /* metadata cache budget per image; 0: vd's default (32 MiB) */
  /* Host cache mode of every file of the chain, as qemu's cache=: "writeback" (NULL),
   * "none" (O_DIRECT), "writethrough", "directsync" (both) or "unsafe" (flushes ignored). */
  const char* cache;
} vd_open_options;

/* Opens `path` and its backing chain (parent names relative to each child's folder).
 * `opts` may be NULL. On success *out is a new handle; on failure *out is NULL. */
VD_API int vd_disk_open(vd_context* ctx, const char* path, const vd_open_options* opts, vd_disk** out);

/* Waits until every accepted request has completed (each callback has run and returned),
 * then flushes and closes every image of the chain and returns the first error. Requests
 * issued once close has started are refused with VD_E_CLOSED; so is a second close. */
VD_API int vd_disk_close(vd_disk* disk);

/* Closes the disk if it is still open, as vd_disk_close, and frees the handle; returns the
 * close's error (the handle is freed all the same). No other thread may use the handle any
 * more. NULL is accepted. */
VD_API int vd_disk_free(vd_disk* disk);

/* ---- Properties (captured at open; callable from anywhere) ------------------------------ */

typedef struct vd_geometry {
  uint32_t cylinders;
  uint32_t heads;
  uint32_t sectors;
} vd_geometry;

/* Virtual size in bytes (0 for NULL). */
VD_API uint64_t vd_disk_size(const vd_disk* disk);
/* 1 if the disk was opened read-only. */
VD_API int vd_disk_read_only(const vd_disk* disk);
/* Number of images in the chain (1 without backing file). */
VD_API unsigned vd_disk_depth(const vd_disk* disk);
/* Physical / logical CHS geometry of the top image: as the image stores it, or derived from
 * the size when it stores none (pchs: 16 heads, 63 sectors; lchs: BIOS translation). */
VD_API int vd_disk_pchs(const vd_disk* disk, vd_geometry* out);
VD_API int vd_disk_lchs(const vd_disk* disk, vd_geometry* out);
/* The backing file name recorded in the top image, as recorded (not resolved). Copies at
 * most `size` bytes including a terminating NUL into `buf` (which may be NULL when size is
 * 0) and returns the name's length without the NUL, like snprintf: 0 when there is none. */
VD_API size_t vd_disk_parent_filename(const vd_disk* disk, char* buf, size_t size);

/* ---- Asynchronous I/O ------------------------------------------------------------------ */

/* `error` is VD_OK or a vd_errc code. May be NULL in a request: nothing is called. */
typedef void (*vd_callback)(void* user, int error);

enum {
  VD_WRITE_FUA = 1u << 0,       /* durable when the callback runs */
  VD_WRITE_COMPRESSED = 1u << 1 /* store compressed where the format can (whole clusters) */
};
enum {
  VD_ZERO_MAY_UNMAP = 1u << 0   /* deallocating is fine as long as the range reads as zeros */
};

/* Reads `length` bytes at `offset` through the chain (ranges no image holds read as zeros). */
VD_API int vd_disk_read(vd_disk* disk, uint64_t offset, void* buf, size_t length, vd_callback cb,
                 void* user);
/* Writes to the top image. `flags`: VD_WRITE_*. */
VD_API int vd_disk_write(vd_disk* disk, uint64_t offset, const void* buf, size_t length,
                  unsigned flags, vd_callback cb, void* user);
/* Afterwards the range reads as zeros. `flags`: VD_ZERO_*. */
VD_API int vd_disk_write_zeroes(vd_disk* disk, uint64_t offset, uint64_t length, unsigned flags,
                         vd_callback cb, void* user);
/* Gives the range back to the storage where the format can (reads then follow the format's
 * rules, as in QEMU). */
VD_API int vd_disk_discard(vd_disk* disk, uint64_t offset, uint64_t length, vd_callback cb,
                    void* user);
/* Completes once every write completed before it is durable. */
VD_API int vd_disk_flush(vd_disk* disk, vd_callback cb, void* user);

enum {
  VD_EXTENT_ALLOCATED = 1u << 0, /* an image of the chain holds the range (data or zeros) */
  VD_EXTENT_ZERO = 1u << 1,      /* the range reads as zeros */
  VD_EXTENT_DATA = 1u << 2       /* the range is stored as data (which may still read as zeros) */
};

/* Allocation status of a prefix of a range. */
typedef struct vd_extent {
  uint64_t offset;  /* = the request's offset */
  uint64_t length;  /* > 0 on success, at most the requested length */
  unsigned flags;   /* VD_EXTENT_* */
  int depth;        /* chain level holding the range (0 = top); -1: no image does */
} vd_extent;

/* `extent` points to a valid struct only for the duration of the call; on error its length
 * is 0. */
typedef void (*vd_extent_callback)(void* user, int error, const vd_extent* extent);

/* Status of the prefix of [offset, offset + length) that has one status, looking down the
 * chain. A range running past the end is clipped to it; an offset at or past the end fails
 * with VD_E_OUT_OF_RANGE. */
VD_API int vd_disk_block_status(vd_disk* disk, uint64_t offset, uint64_t length,
                         vd_extent_callback cb, void* user);

/* ---- Blocking convenience (not from a callback) ---------------------------------------- */

VD_API int vd_disk_pread(vd_disk* disk, uint64_t offset, void* buf, size_t length);
VD_API int vd_disk_pwrite(vd_disk* disk, uint64_t offset, const void* buf, size_t length,
                   unsigned flags);
VD_API int vd_disk_fsync(vd_disk* disk);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* VD_VD_H */
