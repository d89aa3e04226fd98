/* api_reads_c: 4 KiB reads at depth 32 through the C API (vd/vd.h), as `qemu-img bench`.
 *
 *   api_reads_c [-c COUNT] [-d DEPTH] [-s SIZE] [-t IO_THREADS] [-P BYTE|none] IMAGE
 *
 * The C twin of api_reads (bench/api_reads.cpp): opens IMAGE read-only with vd_context_new +
 * vd_disk_open and keeps DEPTH vd_disk_read requests of SIZE bytes in flight until COUNT have
 * completed, each slot re-issuing from its callback. Offsets as qemu-img bench's default:
 * 0, SIZE, 2*SIZE, ..., wrapping to 0 at the end of the image. The callbacks run on the
 * context's executor thread, so the counters need no lock there; main waits on a condition
 * variable for the last completion. Main issues one starter read (not counted) whose callback
 * sends the first wave, so the counters are only ever touched on the executor thread. The
 * clock starts before the starter read and stops when main wakes up. Prints:
 *   api_reads_c: read: COUNT requests in SECONDS s, RATE requests/s
 * Defaults: COUNT 1000000, DEPTH 32, SIZE 4096, IO_THREADS 0 (the context's default). Exit
 * status 1 on a failed request or a read that does not return the pattern (0x5a by default).
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vd/vd.h"

typedef struct bench bench;

typedef struct slot {
  bench* b;
  unsigned char* buf;
} slot;

struct bench {
  vd_disk* disk;
  uint64_t disk_size, count, size;
  int pattern; /* -1: no check */
  /* Touched only on the executor thread (inside callbacks) once the first reads are out;
   * main reads them after the condition variable says done. */
  uint64_t next_offset, issued, completed, bad_data;
  unsigned in_flight;
  int error;
  slot* slots;
  unsigned depth;
  unsigned char* starter;
  /* Done signalling. */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
};

static void usage(void) {
  fprintf(stderr, "usage: api_reads_c [-c COUNT] [-d DEPTH] [-s SIZE] [-t IO_THREADS] [-P BYTE|none] IMAGE\n");
  exit(2);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void signal_done(bench* b) {
  pthread_mutex_lock(&b->mu);
  b->done = 1;
  pthread_cond_signal(&b->cv);
  pthread_mutex_unlock(&b->mu);
}

static void on_read(void* user, int error);

/* qemu-img bench: offset += step, back to 0 when the next request would pass the end. */
static int issue(slot* s) {
  bench* b = s->b;
  uint64_t off;
  int rc;
  if (b->issued >= b->count || b->error) return 0;
  off = b->next_offset;
  b->next_offset += b->size;
  if (b->next_offset + b->size > b->disk_size) b->next_offset = 0;
  ++b->issued;
  ++b->in_flight;
  rc = vd_disk_read(b->disk, off, s->buf, (size_t)b->size, on_read, s);
  if (rc != VD_OK) {
    --b->issued;
    --b->in_flight;
    b->error = rc;
    fprintf(stderr, "api_reads_c: vd_disk_read: %s\n", vd_last_error_message());
  }
  return rc;
}

static void on_read(void* user, int error) {
  slot* s = (slot*)user;
  bench* b = s->b;
  --b->in_flight;
  ++b->completed;
  if (error != VD_OK) {
    if (!b->error) {
      b->error = error;
      fprintf(stderr, "api_reads_c: read: %s\n", vd_last_error_message());
    }
  } else if (b->pattern >= 0 &&
             (s->buf[0] != (unsigned char)b->pattern || s->buf[b->size - 1] != (unsigned char)b->pattern)) {
    ++b->bad_data;
  }
  issue(s);
  if (b->in_flight == 0) signal_done(b);
}

/* The starter read's callback, on the executor: sends the first wave. */
static void on_start(void* user, int error) {
  bench* b = (bench*)user;
  unsigned i;
  if (error != VD_OK) {
    b->error = error;
    fprintf(stderr, "api_reads_c: read: %s\n", vd_last_error_message());
  } else {
    for (i = 0; i < b->depth && b->issued < b->count; ++i) {
      if (issue(&b->slots[i]) != VD_OK) break;
    }
  }
  if (b->in_flight == 0) signal_done(b);
}

int main(int argc, char** argv) {
  uint64_t count = 1000000, size = 4096;
  unsigned depth = 32, io_threads = 0, i;
  int pattern = 0x5a;
  const char* image = NULL;
  vd_context* ctx = NULL;
  vd_disk* disk = NULL;
  vd_open_options opts;
  bench b;
  slot* slots;
  double t0, secs;
  int rc, status = 0;

  for (i = 1; i < (unsigned)argc; ++i) {
    const char* a = argv[i];
    if (!strcmp(a, "-c") && i + 1 < (unsigned)argc) count = strtoull(argv[++i], NULL, 0);
    else if (!strcmp(a, "-d") && i + 1 < (unsigned)argc) depth = (unsigned)strtoul(argv[++i], NULL, 0);
    else if (!strcmp(a, "-s") && i + 1 < (unsigned)argc) size = strtoull(argv[++i], NULL, 0);
    else if (!strcmp(a, "-t") && i + 1 < (unsigned)argc) io_threads = (unsigned)strtoul(argv[++i], NULL, 0);
    else if (!strcmp(a, "-P") && i + 1 < (unsigned)argc) {
      ++i;
      pattern = !strcmp(argv[i], "none") ? -1 : (int)(strtol(argv[i], NULL, 0) & 0xff);
    } else if (a[0] == '-') usage();
    else if (!image) image = a;
    else usage();
  }
  if (!image || depth == 0 || size == 0) usage();

  if ((rc = vd_context_new(io_threads, &ctx)) != VD_OK) {
    fprintf(stderr, "api_reads_c: vd_context_new: %s\n", vd_last_error_message());
    return 1;
  }
  memset(&opts, 0, sizeof opts);
  opts.flags = VD_OPEN_READ_ONLY;
  if ((rc = vd_disk_open(ctx, image, &opts, &disk)) != VD_OK) {
    fprintf(stderr, "api_reads_c: %s\n", vd_last_error_message());
    vd_context_free(ctx);
    return 1;
  }

  memset(&b, 0, sizeof b);
  b.disk = disk;
  b.disk_size = vd_disk_size(disk);
  b.count = count;
  b.size = size;
  b.pattern = pattern;
  pthread_mutex_init(&b.mu, NULL);
  pthread_cond_init(&b.cv, NULL);
  if (b.disk_size < size) {
    fprintf(stderr, "api_reads_c: image smaller than one request\n");
    return 1;
  }
  slots = calloc(depth, sizeof *slots);
  for (i = 0; i < depth; ++i) {
    slots[i].b = &b;
    slots[i].buf = malloc(size);
  }

  t0 = now_s();
  /* The counters belong to the executor thread, so main issues only a starter read (outside
   * the count) whose callback sends the first DEPTH reads from there. */
  b.slots = slots;
  b.depth = depth;
  b.starter = malloc(size);
  if ((rc = vd_disk_read(disk, 0, b.starter, (size_t)size, on_start, &b)) != VD_OK) {
    fprintf(stderr, "api_reads_c: vd_disk_read: %s\n", vd_last_error_message());
    return 1;
  }
  pthread_mutex_lock(&b.mu);
  while (!b.done) pthread_cond_wait(&b.cv, &b.mu);
  pthread_mutex_unlock(&b.mu);
  secs = now_s() - t0;

  if (b.error) {
    fprintf(stderr, "api_reads_c: failed: %s\n", vd_strerror(b.error));
    status = 1;
  } else {
    printf("api_reads_c: read: %llu requests in %.3f s, %.0f requests/s\n",
           (unsigned long long)b.completed, secs, (double)b.completed / secs);
  }
  if (b.bad_data) {
    fprintf(stderr, "api_reads_c: %llu reads did not return the pattern 0x%02x\n",
            (unsigned long long)b.bad_data, (unsigned)pattern);
    status = 1;
  }
  if ((rc = vd_disk_free(disk)) != VD_OK) fprintf(stderr, "api_reads_c: close: %s\n", vd_strerror(rc));
  vd_context_free(ctx);
  for (i = 0; i < depth; ++i) free(slots[i].buf);
  free(slots);
  free(b.starter);
  pthread_cond_destroy(&b.cv);
  pthread_mutex_destroy(&b.mu);
  return status;
}
