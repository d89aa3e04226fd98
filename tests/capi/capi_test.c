/* The C API (vd/vd.h) from C99: a qcow2 chain made by qemu-img, asynchronous writes from
 * several threads at once, read-back, block status, properties, error paths, blocking calls
 * refused inside callbacks, close with requests in flight, and qemu-img check / convert on
 * the result. Exit 0: pass, 1: fail, 77: skipped (no qemu-img). */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vd/vd.h"

#define MIB (1024u * 1024u)
#define DISK_SIZE (4u * MIB)
#define THREADS 4
#define PER_THREAD 64
#define CHUNK 4096u
#define CLOSE_THREADS 2
#define CLOSE_PER_THREAD 512
#define CLOSE_CHUNK 2048u

#define CHECK(c)                                                                          \
  do {                                                                                    \
    if (!(c)) {                                                                           \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n  last error: [%s] errno %d\n", __FILE__, \
              __LINE__, #c, vd_last_error_message(), vd_last_errno());                    \
      exit(1);                                                                            \
    }                                                                                     \
  } while (0)
#define CHECK_RC(expr, want)                                                          \
  do {                                                                                \
    int rc_ = (expr);                                                                 \
    if (rc_ != (want)) {                                                              \
      fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d\n  last error: [%s]\n", \
              __FILE__, __LINE__, #expr, rc_, vd_strerror(rc_), (want),               \
              vd_last_error_message());                                               \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

static char dir[256];
static unsigned char expected[DISK_SIZE]; /* what the top disk must read */

static int sh(const char* fmt, ...) {
  char cmd[1024];
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  CHECK(n > 0 && (size_t)n < sizeof cmd);
  return system(cmd);
}

static void path_of(char* out, size_t size, const char* name) {
  int n = snprintf(out, size, "%s/%s", dir, name);
  CHECK(n > 0 && (size_t)n < size);
}

static unsigned char pattern(uint64_t off, unsigned seed) {
  return (unsigned char)((off * 31u) ^ (off >> 9) ^ (seed * 77u) ^ 0x5a);
}

static void fill(unsigned char* buf, uint64_t off, size_t len, unsigned seed) {
  size_t i;
  for (i = 0; i < len; ++i) buf[i] = pattern(off + i, seed);
}

/* ---- Completion tracking ---- */

typedef struct tracker {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  int errors;
} tracker;

typedef struct request {
  tracker* tr;
  int calls;
  int error;
  int accepted;
} request;

static void tracker_init(tracker* t) {
  CHECK(pthread_mutex_init(&t->mu, NULL) == 0);
  CHECK(pthread_cond_init(&t->cv, NULL) == 0);
  t->done = t->errors = 0;
}

static void tracker_destroy(tracker* t) {
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->cv);
}

static void tracker_wait(tracker* t, int n) {
  pthread_mutex_lock(&t->mu);
  while (t->done < n) pthread_cond_wait(&t->cv, &t->mu);
  pthread_mutex_unlock(&t->mu);
}

static int tracker_done(tracker* t) {
  int n;
  pthread_mutex_lock(&t->mu);
  n = t->done;
  pthread_mutex_unlock(&t->mu);
  return n;
}

static void request_cb(void* user, int error) {
  request* r = (request*)user;
  pthread_mutex_lock(&r->tr->mu);
  r->calls++;
  r->error = error;
  if (error) r->tr->errors++;
  r->tr->done++;
  pthread_cond_broadcast(&r->tr->cv);
  pthread_mutex_unlock(&r->tr->mu);
}

/* ---- Concurrent writers ---- */

static unsigned char wbuf[THREADS][PER_THREAD][CHUNK];
static request wreq[THREADS][PER_THREAD];

typedef struct writer {
  vd_disk* disk;
  int t;
  tracker* tr;
} writer;

/* Thread t writes the first half of every 8 KiB block it owns, with seed 1. */
static uint64_t writer_offset(int t, int i) { return (uint64_t)(t * PER_THREAD + i) * 2 * CHUNK; }

static void* writer_main(void* arg) {
  writer* w = (writer*)arg;
  int i;
  for (i = 0; i < PER_THREAD; ++i) {
    uint64_t off = writer_offset(w->t, i);
    request* r = &wreq[w->t][i];
    r->tr = w->tr;
    fill(wbuf[w->t][i], off, CHUNK, 1);
    CHECK_RC(vd_disk_write(w->disk, off, wbuf[w->t][i], CHUNK, 0, request_cb, r), VD_OK);
  }
  return NULL;
}

/* ---- Block status ---- */

typedef struct status_result {
  tracker tr;
  int error;
  vd_extent extent;
  char message[512];
} status_result;

static void status_cb(void* user, int error, const vd_extent* e) {
  status_result* s = (status_result*)user;
  pthread_mutex_lock(&s->tr.mu);
  s->error = error;
  s->extent = *e;
  /* Set on the executor thread before a failing callback runs. */
  snprintf(s->message, sizeof s->message, "%s", error ? vd_last_error_message() : "");
  s->tr.done++;
  pthread_cond_broadcast(&s->tr.cv);
  pthread_mutex_unlock(&s->tr.mu);
}

static status_result status(vd_disk* d, uint64_t off, uint64_t len) {
  status_result s;
  memset(&s, 0, sizeof s);
  tracker_init(&s.tr);
  CHECK_RC(vd_disk_block_status(d, off, len, status_cb, &s), VD_OK);
  tracker_wait(&s.tr, 1);
  tracker_destroy(&s.tr);
  return s;
}

/* ---- A callback that issues requests, and tries blocking calls ---- */

typedef struct chained {
  tracker tr;
  vd_context* ctx;
  const char* path;
  vd_disk* disk;
  int close_rc, pread_rc, open_rc, second_rc, second_calls;
  unsigned char buf[512];
} chained;

static void chained_second(void* user, int error) {
  chained* c = (chained*)user;
  pthread_mutex_lock(&c->tr.mu);
  c->second_rc = error;
  c->second_calls++;
  c->tr.done++;
  pthread_cond_broadcast(&c->tr.cv);
  pthread_mutex_unlock(&c->tr.mu);
}

static void chained_first(void* user, int error) {
  chained* c = (chained*)user;
  vd_disk* other = NULL;
  CHECK(error == VD_OK);
  c->close_rc = vd_disk_close(c->disk);
  c->pread_rc = vd_disk_pread(c->disk, 0, c->buf, sizeof c->buf);
  c->open_rc = vd_disk_open(c->ctx, c->path, NULL, &other);
  CHECK(other == NULL);
  /* A new request from inside a callback is fine. */
  CHECK_RC(vd_disk_read(c->disk, 512, c->buf, sizeof c->buf, chained_second, c), VD_OK);
}

/* ---- Close with requests in flight ---- */

static unsigned char cbuf[CLOSE_THREADS][CLOSE_PER_THREAD][CLOSE_CHUNK];
static request creq[CLOSE_THREADS][CLOSE_PER_THREAD];

typedef struct closer_writer {
  vd_disk* disk;
  int t;
  tracker* tr;
  pthread_mutex_t* mu;
  int submitted; /* under *mu */
  int refused;
} closer_writer;

static uint64_t close_offset(int t, int i) {
  return 2u * MIB + (uint64_t)(t * CLOSE_PER_THREAD + i) * CLOSE_CHUNK;
}

static void* closer_writer_main(void* arg) {
  closer_writer* w = (closer_writer*)arg;
  int i;
  for (i = 0; i < CLOSE_PER_THREAD; ++i) {
    uint64_t off = close_offset(w->t, i);
    request* r = &creq[w->t][i];
    int rc;
    r->tr = w->tr;
    fill(cbuf[w->t][i], off, CLOSE_CHUNK, 2);
    rc = vd_disk_write(w->disk, off, cbuf[w->t][i], CLOSE_CHUNK, 0, request_cb, r);
    if (rc == VD_E_CLOSED) {
      w->refused = 1;
      break;
    }
    CHECK_RC(rc, VD_OK);
    pthread_mutex_lock(w->mu);
    r->accepted = 1;
    w->submitted++;
    pthread_mutex_unlock(w->mu);
  }
  return NULL;
}

static void never_cb(void* user, int error) {
  (void)user;
  (void)error;
  fprintf(stderr, "a refused request's callback ran\n");
  exit(1);
}

static void never_status_cb(void* user, int error, const vd_extent* e) {
  (void)e;
  never_cb(user, error);
}

/* ---- The test ---- */

int main(void) {
  vd_context* ctx = NULL;
  vd_disk *top = NULL, *base = NULL, *other = NULL, *missing = (vd_disk*)&dir;
  vd_open_options ro;
  char base_path[300], top_path[300], other_path[300], raw_path[300], name[64];
  static unsigned char back[DISK_SIZE];
  tracker tr;
  int t, i;
  const char* tmp = getenv("TMPDIR");

  if (system("qemu-img --version >/dev/null 2>&1") != 0) {
    printf("SKIP: qemu-img not found\n");
    return 77;
  }
  snprintf(dir, sizeof dir, "%s/vd_capi_XXXXXX", tmp && *tmp ? tmp : "/tmp");
  CHECK(mkdtemp(dir) != NULL);
  path_of(base_path, sizeof base_path, "base.qcow2");
  path_of(top_path, sizeof top_path, "top.qcow2");
  path_of(other_path, sizeof other_path, "other.raw");
  path_of(raw_path, sizeof raw_path, "top.raw");

  /* Version: the library, the header and the CMake project agree. */
  CHECK(vd_version_number() == VD_VERSION_NUMBER);
  CHECK(vd_version_number() == VD_EXPECTED_VERSION_NUMBER);
  CHECK(strcmp(vd_version(), VD_EXPECTED_VERSION) == 0);
  CHECK(strcmp(vd_strerror(VD_E_NOT_FOUND), "not found") == 0);
  CHECK(strcmp(vd_strerror(12345), "unknown error") == 0);

  CHECK_RC(vd_context_new(4, &ctx), VD_OK);

  /* Error path: a missing file names the file. */
  CHECK_RC(vd_disk_open(ctx, "/nonexistent/vd-capi-missing.qcow2", NULL, &missing), VD_E_NOT_FOUND);
  CHECK(missing == NULL);
  CHECK(strstr(vd_last_error_message(), "vd-capi-missing.qcow2") != NULL);
  CHECK(vd_last_errno() == ENOENT);
  memset(&ro, 0, sizeof ro);
  ro.format = "no-such-format";
  CHECK_RC(vd_disk_open(ctx, base_path, &ro, &missing), VD_E_NOT_FOUND);
  CHECK(strstr(vd_last_error_message(), "no-such-format") != NULL);

  /* The base: 4 MiB, its first 2 MiB written through the API (seed 0). */
  CHECK(sh("cd '%s' && qemu-img create -q -f qcow2 base.qcow2 4M", dir) == 0);
  CHECK_RC(vd_disk_open(ctx, base_path, NULL, &base), VD_OK);
  CHECK(vd_disk_size(base) == DISK_SIZE && vd_disk_depth(base) == 1 && !vd_disk_read_only(base));
  CHECK(vd_disk_parent_filename(base, name, sizeof name) == 0 && name[0] == '\0');
  fill(expected, 0, 2 * MIB, 0);
  CHECK_RC(vd_disk_pwrite(base, 0, expected, 2 * MIB, 0), VD_OK);
  CHECK_RC(vd_disk_fsync(base), VD_OK);
  CHECK_RC(vd_disk_close(base), VD_OK);
  CHECK_RC(vd_disk_free(base), VD_OK);

  /* Cache modes by qemu's names; a bad one is refused with qemu's message. */
  memset(&ro, 0, sizeof ro);
  ro.cache = "fastest";
  CHECK_RC(vd_disk_open(ctx, base_path, &ro, &missing), VD_E_INVALID_ARGUMENT);
  CHECK(strstr(vd_last_error_message(), "Invalid cache option: fastest") != NULL);
  ro.cache = "writethrough";
  ro.flags = VD_OPEN_READ_ONLY;
  CHECK_RC(vd_disk_open(ctx, base_path, &ro, &base), VD_OK);
  {
    static unsigned char got[4096];
    CHECK_RC(vd_disk_pread(base, 4096, got, sizeof got), VD_OK);
    CHECK(memcmp(got, expected + 4096, sizeof got) == 0);
  }
  CHECK_RC(vd_disk_free(base), VD_OK);

  /* The top over it, and a second disk on the same context. */
  CHECK(sh("cd '%s' && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2", dir) == 0);
  CHECK(sh("qemu-img create -q -f raw '%s' 1M", other_path) == 0);
  CHECK_RC(vd_disk_open(ctx, top_path, NULL, &top), VD_OK);
  memset(&ro, 0, sizeof ro);
  ro.format = "raw";
  CHECK_RC(vd_disk_open(ctx, other_path, &ro, &other), VD_OK);

  /* Properties. */
  CHECK(vd_disk_size(top) == DISK_SIZE);
  CHECK(vd_disk_depth(top) == 2);
  CHECK(vd_disk_parent_filename(top, name, sizeof name) == strlen("base.qcow2"));
  CHECK(strcmp(name, "base.qcow2") == 0);
  CHECK(vd_disk_parent_filename(top, name, 3) == strlen("base.qcow2") && strcmp(name, "ba") == 0);
  CHECK(vd_disk_parent_filename(top, NULL, 0) == strlen("base.qcow2"));
  {
    vd_geometry p, l;
    CHECK_RC(vd_disk_pchs(top, &p), VD_OK);
    CHECK_RC(vd_disk_lchs(top, &l), VD_OK);
    CHECK(p.heads == 16 && p.sectors == 63 && p.cylinders == DISK_SIZE / 512 / (16 * 63));
    CHECK(l.cylinders > 0 && l.heads > 0 && l.sectors == 63);
    CHECK_RC(vd_disk_pchs(top, NULL), VD_E_INVALID_ARGUMENT);
  }

  /* Asynchronous writes from several threads at once, over the base's data (copy on write
   * of partial clusters) and beyond it. */
  {
    pthread_t th[THREADS];
    writer w[THREADS];
    tracker_init(&tr);
    for (t = 0; t < THREADS; ++t) {
      w[t].disk = top;
      w[t].t = t;
      w[t].tr = &tr;
      CHECK(pthread_create(&th[t], NULL, writer_main, &w[t]) == 0);
    }
    /* Meanwhile, the other disk of the context. */
    fill(back, 0, 65536, 9);
    CHECK_RC(vd_disk_pwrite(other, 4096, back, 65536, VD_WRITE_FUA), VD_OK);
    memset(back + 65536, 0, 65536);
    CHECK_RC(vd_disk_pread(other, 4096, back + 65536, 65536), VD_OK);
    CHECK(memcmp(back, back + 65536, 65536) == 0);
    for (t = 0; t < THREADS; ++t) CHECK(pthread_join(th[t], NULL) == 0);
    tracker_wait(&tr, THREADS * PER_THREAD);
    CHECK(tr.errors == 0);
    for (t = 0; t < THREADS; ++t) {
      for (i = 0; i < PER_THREAD; ++i) {
        CHECK(wreq[t][i].calls == 1 && wreq[t][i].error == VD_OK);
        memcpy(expected + writer_offset(t, i), wbuf[t][i], CHUNK);
      }
    }
    tracker_destroy(&tr);
  }

  /* Flush, then read back: a blocking read of everything and async reads of pieces. */
  {
    request fr;
    static unsigned char piece[8][65536];
    request pr[8];
    memset(&fr, 0, sizeof fr);
    memset(pr, 0, sizeof pr);
    tracker_init(&tr);
    fr.tr = &tr;
    CHECK_RC(vd_disk_flush(top, request_cb, &fr), VD_OK);
    tracker_wait(&tr, 1);
    CHECK(fr.calls == 1 && fr.error == VD_OK);
    CHECK_RC(vd_disk_pread(top, 0, back, DISK_SIZE), VD_OK);
    CHECK(memcmp(back, expected, DISK_SIZE) == 0);
    for (i = 0; i < 8; ++i) {
      pr[i].tr = &tr;
      CHECK_RC(vd_disk_read(top, (uint64_t)i * 512 * 1024 + 1000, piece[i], 65536, request_cb, &pr[i]),
               VD_OK);
    }
    tracker_wait(&tr, 9);
    CHECK(tr.errors == 0);
    for (i = 0; i < 8; ++i) {
      CHECK(memcmp(piece[i], expected + (uint64_t)i * 512 * 1024 + 1000, 65536) == 0);
    }
    tracker_destroy(&tr);
  }

  /* Block status. */
  {
    status_result s = status(top, 0, DISK_SIZE);
    CHECK(s.error == VD_OK && s.extent.offset == 0 && s.extent.length > 0);
    CHECK(s.extent.flags == (VD_EXTENT_ALLOCATED | VD_EXTENT_DATA) && s.extent.depth == 0);
    s = status(top, 3 * MIB, MIB); /* held by no image */
    CHECK(s.error == VD_OK && s.extent.offset == 3 * MIB && s.extent.length == MIB);
    CHECK(!(s.extent.flags & VD_EXTENT_ALLOCATED) && (s.extent.flags & VD_EXTENT_ZERO));
    s = status(top, DISK_SIZE, 512); /* the error reaches the callback, with its message */
    CHECK(s.error == VD_E_OUT_OF_RANGE && s.extent.length == 0);
    CHECK(strstr(s.message, "beyond the end") != NULL);
  }

  /* Zeroes and discard, then a read-only disk refusing writes. */
  {
    request zr, dr;
    unsigned char z[4096];
    memset(&zr, 0, sizeof zr);
    memset(&dr, 0, sizeof dr);
    tracker_init(&tr);
    zr.tr = dr.tr = &tr;
    CHECK_RC(vd_disk_write_zeroes(top, 1 * MIB, 65536, VD_ZERO_MAY_UNMAP, request_cb, &zr), VD_OK);
    CHECK_RC(vd_disk_discard(other, 0, 65536, request_cb, &dr), VD_OK);
    tracker_wait(&tr, 2);
    CHECK(zr.calls == 1 && zr.error == VD_OK && dr.calls == 1 && dr.error == VD_OK);
    memset(expected + 1 * MIB, 0, 65536);
    CHECK_RC(vd_disk_pread(top, 1 * MIB, z, sizeof z), VD_OK);
    CHECK(memcmp(z, expected + 1 * MIB, sizeof z) == 0);
    CHECK_RC(vd_disk_write(top, 0, z, 1, 0x80, request_cb, &zr), VD_E_INVALID_ARGUMENT);
    CHECK_RC(vd_disk_read(top, 0, NULL, 1, request_cb, &zr), VD_E_INVALID_ARGUMENT);
    tracker_destroy(&tr);

    CHECK_RC(vd_disk_close(other), VD_OK);
    CHECK_RC(vd_disk_free(other), VD_OK);
    memset(&ro, 0, sizeof ro);
    ro.flags = VD_OPEN_READ_ONLY;
    ro.format = "raw";
    CHECK_RC(vd_disk_open(ctx, other_path, &ro, &other), VD_OK);
    CHECK(vd_disk_read_only(other));
    CHECK_RC(vd_disk_pwrite(other, 0, z, sizeof z, 0), VD_E_READ_ONLY);
    CHECK(vd_last_error_message()[0] != '\0');
    CHECK_RC(vd_disk_free(other), VD_OK); /* closes it */
  }

  /* Inside a callback: blocking calls are refused, new requests are fine. */
  {
    chained* c = (chained*)calloc(1, sizeof *c);
    CHECK(c != NULL);
    tracker_init(&c->tr);
    c->disk = top;
    c->ctx = ctx;
    c->path = other_path;
    CHECK_RC(vd_disk_read(top, 0, c->buf, sizeof c->buf, chained_first, c), VD_OK);
    tracker_wait(&c->tr, 1);
    CHECK(c->close_rc == VD_E_IN_CALLBACK && c->pread_rc == VD_E_IN_CALLBACK);
    CHECK(c->open_rc == VD_E_IN_CALLBACK);
    CHECK(c->second_calls == 1 && c->second_rc == VD_OK);
    CHECK(memcmp(c->buf, expected + 512, sizeof c->buf) == 0);
    tracker_destroy(&c->tr);
    free(c);
  }

  /* Close with requests in flight: every accepted callback has run once when close returns,
   * close succeeds, and everything after it is refused with VD_E_CLOSED. */
  {
    pthread_t th[CLOSE_THREADS];
    closer_writer w[CLOSE_THREADS];
    pthread_mutex_t mu;
    int submitted = 0, accepted = 0, done_before, done_at_close;
    struct timespec nap = {0, 100000};
    CHECK(pthread_mutex_init(&mu, NULL) == 0);
    tracker_init(&tr);
    for (t = 0; t < CLOSE_THREADS; ++t) {
      memset(&w[t], 0, sizeof w[t]);
      w[t].disk = top;
      w[t].t = t;
      w[t].tr = &tr;
      w[t].mu = &mu;
      CHECK(pthread_create(&th[t], NULL, closer_writer_main, &w[t]) == 0);
    }
    while (submitted < 64) {
      nanosleep(&nap, NULL);
      pthread_mutex_lock(&mu);
      submitted = w[0].submitted + w[1].submitted;
      pthread_mutex_unlock(&mu);
    }
    pthread_mutex_lock(&mu);
    submitted = w[0].submitted + w[1].submitted;
    pthread_mutex_unlock(&mu);
    done_before = tracker_done(&tr);
    CHECK_RC(vd_disk_close(top), VD_OK);
    done_at_close = tracker_done(&tr);
    for (t = 0; t < CLOSE_THREADS; ++t) CHECK(pthread_join(th[t], NULL) == 0);
    for (t = 0; t < CLOSE_THREADS; ++t) {
      for (i = 0; i < CLOSE_PER_THREAD; ++i) {
        request* r = &creq[t][i];
        CHECK(r->calls == (r->accepted ? 1 : 0));
        CHECK(r->error == VD_OK);
        if (r->accepted) memcpy(expected + close_offset(t, i), cbuf[t][i], CLOSE_CHUNK);
        accepted += r->accepted;
      }
    }
    CHECK(done_at_close == accepted && tracker_done(&tr) == accepted);
    printf("close in flight: %d of %d accepted requests still running when close began; "
           "%d accepted in all, %s\n",
           submitted - done_before, submitted, accepted,
           w[0].refused || w[1].refused ? "later ones refused" : "none refused");
    tracker_destroy(&tr);
    pthread_mutex_destroy(&mu);

    CHECK_RC(vd_disk_read(top, 0, back, 512, never_cb, NULL), VD_E_CLOSED);
    CHECK_RC(vd_disk_write(top, 0, back, 512, 0, never_cb, NULL), VD_E_CLOSED);
    CHECK_RC(vd_disk_flush(top, never_cb, NULL), VD_E_CLOSED);
    CHECK_RC(vd_disk_block_status(top, 0, 512, never_status_cb, NULL), VD_E_CLOSED);
    CHECK_RC(vd_disk_pread(top, 0, back, 512), VD_E_CLOSED);
    CHECK_RC(vd_disk_close(top), VD_E_CLOSED);
    CHECK(vd_disk_size(top) == DISK_SIZE); /* properties stay until free */
  }

  CHECK_RC(vd_context_free(ctx), VD_E_BUSY);
  CHECK_RC(vd_disk_free(top), VD_OK);
  CHECK_RC(vd_context_free(ctx), VD_OK);

  /* qemu-img agrees: both images are clean, and the chain reads what we expect. */
  CHECK(sh("qemu-img check -q '%s'", top_path) == 0);
  CHECK(sh("qemu-img check -q '%s'", base_path) == 0);
  CHECK(sh("qemu-img convert -O raw '%s' '%s'", top_path, raw_path) == 0);
  {
    FILE* f = fopen(raw_path, "rb");
    CHECK(f != NULL);
    CHECK(fread(back, 1, DISK_SIZE, f) == DISK_SIZE);
    fclose(f);
    CHECK(memcmp(back, expected, DISK_SIZE) == 0);
  }

  sh("rm -rf '%s'", dir);
  printf("capi: all checks passed\n");
  return 0;
}
