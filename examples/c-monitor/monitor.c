/* A VM monitor written in C on vd's C API (vd/vd.h): one context (an executor thread and
 * I/O threads) hosting a disk; several "vCPU" threads submit asynchronous writes and reads at
 * once, callbacks count completions; then hot-unplug: close while requests are still in
 * flight (close waits for them, each callback runs once), and the disk refuses what comes
 * after.
 *
 * Usage: vd_c_monitor IMAGE      (a writable image of at least 16 MiB, any format vd opens)
 * Exits 0 when every check passed. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vd/vd.h>

enum { kThreads = 4, kRequests = 64, kSize = 4096 };

static atomic_int completed;
static atomic_int failed;

static void on_done(void* user, int error) {
  (void)user;
  if (error) atomic_fetch_add(&failed, 1);
  atomic_fetch_add(&completed, 1);
}

struct vcpu {
  vd_disk* disk;
  int index;
  unsigned char buf[kRequests][kSize]; /* live until the disk is closed */
};

static void* vcpu_main(void* arg) {
  struct vcpu* v = arg;
  for (int i = 0; i < kRequests; ++i) {
    memset(v->buf[i], v->index * 16 + i % 16, kSize);
    uint64_t off = ((uint64_t)v->index << 22) + (uint64_t)i * kSize;
    if (vd_disk_write(v->disk, off, v->buf[i], kSize, 0, on_done, NULL) != VD_OK) atomic_fetch_add(&failed, 1);
  }
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
    return 2;
  }
  printf("vd %s\n", vd_version());
  vd_context* ctx = NULL;
  if (vd_context_new(2, &ctx) != VD_OK) return fprintf(stderr, "context: %s\n", vd_last_error_message()), 1;
  vd_disk* disk = NULL;
  if (vd_disk_open(ctx, argv[1], NULL, &disk) != VD_OK) {
    fprintf(stderr, "open: %s\n", vd_last_error_message());
    vd_context_free(ctx);
    return 1;
  }
  printf("%s: %llu bytes, %u image(s) in the chain\n", argv[1], (unsigned long long)vd_disk_size(disk),
         vd_disk_depth(disk));

  static struct vcpu vcpus[kThreads];
  pthread_t threads[kThreads];
  for (int t = 0; t < kThreads; ++t) {
    vcpus[t].disk = disk;
    vcpus[t].index = t;
    pthread_create(&threads[t], NULL, vcpu_main, &vcpus[t]);
  }
  for (int t = 0; t < kThreads; ++t) pthread_join(threads[t], NULL);

  /* What the vCPUs wrote reads back (blocking helper: we are not in a callback). */
  int bad = 0;
  unsigned char back[kSize];
  if (vd_disk_fsync(disk) != VD_OK) bad++;
  for (int t = 0; t < kThreads; ++t) {
    if (vd_disk_pread(disk, ((uint64_t)t << 22) + 5 * kSize, back, kSize) != VD_OK) bad++;
    if (memcmp(back, vcpus[t].buf[5], kSize) != 0) bad++;
  }

  /* Hot-unplug with requests in flight: queue more writes, close at once. */
  atomic_store(&completed, 0);
  int accepted = 0;
  for (int i = 0; i < kRequests; ++i)
    if (vd_disk_write(disk, (uint64_t)i * kSize, vcpus[0].buf[i], kSize, 0, on_done, NULL) == VD_OK) accepted++;
  int closed = vd_disk_close(disk);
  int after = vd_disk_flush(disk, on_done, NULL);
  printf("unplugged: %d requests were in flight, %d completed before close returned\n", accepted,
         atomic_load(&completed));
  if (closed != VD_OK) bad++;
  if (atomic_load(&completed) != accepted) bad++;
  if (after != VD_E_CLOSED) bad++;
  if (atomic_load(&failed)) bad++;
  vd_disk_free(disk);
  vd_context_free(ctx);
  if (bad) {
    fprintf(stderr, "FAILED: %d checks\n", bad);
    return 1;
  }
  printf("ok\n");
  return 0;
}
