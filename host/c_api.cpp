// The C API (include/vd/vd.h) over vd::Disk.
//
// A vd_context owns an io_context run by one executor thread, a thread pool for the blocking
// file I/O and a PosixIoProvider joining them, as vd::Runtime does for vdimg; the difference is
// that the io_context runs on its own thread, all the time, and callers on other threads post
// their requests to it. Everything vd does on a disk therefore happens on that one thread
// (vd's single-executor rule), and the C callbacks run there too.
//
// Close: each vd_disk counts its accepted requests (a mutex, a counter and a condition
// variable, touched once when a request is accepted and once after its callback returned).
// vd_disk_close first refuses new requests, waits for the count to drop to zero, and only
// then runs Disk::close on the executor. So every accepted callback runs exactly once, and
// nothing ever runs on a Disk that is gone.
#include "vd/vd.h"

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <condition_variable>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

#include "vd/backend.h"
#include "vd/disk.h"
#include "vd/error.h"
#include "vd/registry.h"
#include "vd/runtime.h"

// The C codes are vd::Errc's values; a renumbering there would silently change the ABI here.
static_assert(VD_E_CORRUPT == static_cast<int>(vd::Errc::corrupt));
static_assert(VD_E_NOT_SUPPORTED == static_cast<int>(vd::Errc::not_supported));
static_assert(VD_E_IO == static_cast<int>(vd::Errc::io));
static_assert(VD_E_READ_ONLY == static_cast<int>(vd::Errc::read_only));
static_assert(VD_E_NOT_ALLOCATED == static_cast<int>(vd::Errc::not_allocated));
static_assert(VD_E_INVALID_ARGUMENT == static_cast<int>(vd::Errc::invalid_argument));
static_assert(VD_E_NOT_FOUND == static_cast<int>(vd::Errc::not_found));
static_assert(VD_E_WRONG_FORMAT == static_cast<int>(vd::Errc::wrong_format));
static_assert(VD_E_WRONG_PASSPHRASE == static_cast<int>(vd::Errc::wrong_passphrase));
static_assert(VD_E_TOO_LARGE == static_cast<int>(vd::Errc::too_large));
static_assert(VD_E_OUT_OF_RANGE == static_cast<int>(vd::Errc::out_of_range));
static_assert(VD_E_PERMISSION == static_cast<int>(vd::Errc::permission));
static_assert(VD_E_BUSY == static_cast<int>(vd::Errc::busy));
static_assert(VD_E_CANCELED == static_cast<int>(vd::Errc::canceled));
static_assert(VD_E_EXISTS == static_cast<int>(vd::Errc::exists));
static_assert(VD_E_NO_SPACE == static_cast<int>(vd::Errc::no_space));
static_assert(VD_E_INTERNAL == static_cast<int>(vd::Errc::internal));
static_assert(unsigned(VD_WRITE_FUA) == vd::write_fua);
static_assert(unsigned(VD_WRITE_COMPRESSED) == vd::write_compressed);
static_assert(unsigned(VD_ZERO_MAY_UNMAP) == vd::zero_may_unmap);

struct vd_context {
  explicit vd_context(unsigned io_threads)
      : pool(io_threads), files(vd::make_file_provider(aio, ioc.get_executor(), pool)),
        registry(vd::Registry::builtin()),
        guard(ioc.get_executor()) {}

  boost::asio::io_context ioc;
  boost::asio::thread_pool pool;
  vd::Aio aio = vd::Aio::automatic;  // VD_AIO picks threads or io_uring
  std::unique_ptr<vd::IoProvider> files;
  vd::Registry registry;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard;
  std::thread thread;
  std::atomic<unsigned> disks{0};  // handles not freed yet
};

struct vd_disk {
  explicit vd_disk(vd_context* c) : ctx(c) {}

  vd_context* const ctx;
  std::unique_ptr<vd::Disk> disk;  // touched on the executor only

  enum class State { open, closing, closed };
  std::mutex mu;
  std::condition_variable idle;
  uint64_t inflight = 0;  // accepted requests whose callback has not returned yet
  State state = State::open;

  // Properties, captured at open.
  uint64_t size = 0;
  bool read_only = false;
  unsigned depth = 0;
  vd_geometry pchs{}, lchs{};
  std::optional<std::string> parent;
};

namespace {

// ---- Errors ------------------------------------------------------------------------------

struct LastError {
  std::string message;
  int err = 0;
};
thread_local LastError tl_last;
// The context whose executor runs on this thread, if any.
thread_local const vd_context* tl_executor = nullptr;

int fail(int code, std::string message, int err = 0) {
  tl_last.message = std::move(message);
  tl_last.err = err;
  return code;
}

int code_of(const vd::Error& e) {
  if (!e) return VD_OK;
  if (int k = static_cast<int>(e.kind())) return k;
  return VD_E_IO;  // an error code of another category (a plugin's std::errc, say)
}

int fail(const vd::Error& e) {
  int err = e.system_errno();
  const std::error_category& cat = e.code().category();
  if (!err && (cat == std::generic_category() || cat == std::system_category())) err = e.code().value();
  return fail(code_of(e), e.message(), err);
}

int no_memory() { return fail(VD_E_NO_MEMORY, "out of memory"); }
int internal(const char* what) { return fail(VD_E_INTERNAL, std::string("internal error: ") + what); }

// Runs the body, turning an escaping exception into an error code: none may cross into C.
template <class F>
int guarded(F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return no_memory();
  } catch (const std::system_error& e) {  // thread creation, mutexes
    return fail(VD_E_NO_MEMORY, e.what(), e.code().value());
  } catch (const std::exception& e) {
    return internal(e.what());
  } catch (...) {
    return internal("unknown exception");
  }
}

int in_callback(const char* fn) {
  return fail(VD_E_IN_CALLBACK, std::string(fn) +
                                    " blocks and must not be called from a callback (an executor "
                                    "thread); nothing was done");
}

int null_argument(const char* fn, const char* what) {
  return fail(VD_E_INVALID_ARGUMENT, std::string(fn) + ": " + what + " is NULL");
}

// ---- The executor ----------------------------------------------------------------------

unsigned default_io_threads() {
  // As vd::Runtime: file I/O blocks in the kernel, so more threads than cores.
  return std::max(4u, 2 * std::thread::hardware_concurrency());
}

void run_executor(vd_context* ctx) {
  tl_executor = ctx;
  for (;;) {
    try {
      ctx->ioc.run();  // returns once the work guard is gone and nothing is left
      return;
    } catch (...) {
      // A handler threw (vd itself does not throw; an allocation may). Keep serving.
    }
  }
}

// Runs `f` on the executor and waits for its result (the caller is not the executor).
template <class F>
auto run_on_executor(vd_context* ctx, F f) -> decltype(f()) {
  std::packaged_task<decltype(f())()> task(std::move(f));
  auto result = task.get_future();
  boost::asio::post(ctx->ioc, [&task] { task(); });
  return result.get();  // rethrows what `f` threw
}

// ---- Requests ----------------------------------------------------------------------------

int admit(vd_disk* d) {
  std::lock_guard lock(d->mu);
  if (d->state != vd_disk::State::open) return fail(VD_E_CLOSED, "the disk is closed");
  ++d->inflight;
  return VD_OK;
}

void release(vd_disk* d) {
  // Notified under the lock: once the count is zero, a closer may go on to free the handle.
  std::lock_guard lock(d->mu);
  if (--d->inflight == 0) d->idle.notify_all();
}

// Runs on the executor: the request's one completion.
void complete(vd_disk* d, vd_callback cb, void* user, const vd::Error& e) {
  int code = e ? fail(e) : VD_OK;
  if (cb) cb(user, code);
  release(d);
}

// Accepts a request and posts `start(disk, done)` to the executor, where `done(Error)` is the
// request's completion.
template <class Start>
int submit(vd_disk* d, vd_callback cb, void* user, Start start) {
  if (int rc = admit(d)) return rc;
  // From a callback (already on the executor): start at once, saving a trip through the
  // queue; the completion is still posted, never run inside this call.
  if (d->ctx->ioc.get_executor().running_in_this_thread()) {
    try {
      start(*d->disk, [d, cb, user](vd::Error e) { complete(d, cb, user, e); });
    } catch (...) {
      release(d);
      return no_memory();
    }
    return VD_OK;
  }
  try {
    boost::asio::post(d->ctx->ioc, [d, cb, user, start = std::move(start)]() mutable {
      try {
        start(*d->disk, [d, cb, user](vd::Error e) { complete(d, cb, user, e); });
      } catch (...) {
        // Only allocations throw, before vd took the completion.
        complete(d, cb, user, vd::Error(vd::Errc::internal, "out of memory starting a request"));
      }
    });
  } catch (...) {
    release(d);
    return no_memory();
  }
  return VD_OK;
}

int check_disk(const vd_disk* d, const char* fn) { return d ? VD_OK : null_argument(fn, "disk"); }

int check_buffer(const void* buf, size_t length, const char* fn) {
  return buf || length == 0 ? VD_OK : null_argument(fn, "buffer");
}

// ---- Blocking helpers ------------------------------------------------------------------------

struct SyncWait {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  int code = VD_OK;
  LastError error;

  static void callback(void* user, int code) {
    auto* w = static_cast<SyncWait*>(user);
    std::lock_guard lock(w->mu);  // notified under the lock: the waiter's frame goes next
    w->code = code;
    if (code) w->error = tl_last;
    w->done = true;
    w->cv.notify_one();
  }

  int wait() {
    std::unique_lock lock(mu);
    cv.wait(lock, [this] { return done; });
    return code ? fail(code, error.message, error.err) : VD_OK;
  }
};

template <class Issue>
int blocking(vd_disk* d, const char* fn, Issue issue) {
  if (int rc = check_disk(d, fn)) return rc;
  if (tl_executor) return in_callback(fn);
  SyncWait w;
  if (int rc = issue(&SyncWait::callback, &w)) return rc;
  return w.wait();
}

vd_geometry to_c(const vd::Geometry& g) { return vd_geometry{g.cylinders, g.heads, g.sectors}; }

}  // namespace

// ---- Version and errors --------------------------------------------------------------------

#define VD_STR2(x) #x
#define VD_STR(x) VD_STR2(x)

extern "C" const char* vd_version(void) {
  return VD_STR(VD_VERSION_MAJOR) "." VD_STR(VD_VERSION_MINOR) "." VD_STR(VD_VERSION_PATCH);
}

extern "C" int vd_version_number(void) { return VD_VERSION_NUMBER; }

extern "C" const char* vd_strerror(int code) {
  switch (code) {
    case VD_OK: return "success";
    case VD_E_CORRUPT: return "image corrupt";
    case VD_E_NOT_SUPPORTED: return "not supported";
    case VD_E_IO: return "I/O error";
    case VD_E_READ_ONLY: return "read-only";
    case VD_E_NOT_ALLOCATED: return "not allocated";
    case VD_E_INVALID_ARGUMENT: return "invalid argument";
    case VD_E_NOT_FOUND: return "not found";
    case VD_E_WRONG_FORMAT: return "wrong format";
    case VD_E_WRONG_PASSPHRASE: return "wrong passphrase";
    case VD_E_TOO_LARGE: return "too large";
    case VD_E_OUT_OF_RANGE: return "out of range";
    case VD_E_PERMISSION: return "permission denied";
    case VD_E_BUSY: return "busy";
    case VD_E_CANCELED: return "canceled";
    case VD_E_EXISTS: return "already exists";
    case VD_E_NO_SPACE: return "no space left";
    case VD_E_INTERNAL: return "internal error";
    case VD_E_CLOSED: return "disk closed";
    case VD_E_IN_CALLBACK: return "blocking call from a callback";
    case VD_E_NO_MEMORY: return "out of memory";
    default: return "unknown error";
  }
}

extern "C" const char* vd_last_error_message(void) { return tl_last.message.c_str(); }

extern "C" int vd_last_errno(void) { return tl_last.err; }

// ---- Context ---------------------------------------------------------------------------------

extern "C" int vd_context_new(unsigned io_threads, vd_context** out) {
  if (!out) return null_argument("vd_context_new", "out");
  *out = nullptr;
  return guarded([&]() -> int {
    auto ctx = std::make_unique<vd_context>(io_threads ? io_threads : default_io_threads());
    ctx->thread = std::thread(run_executor, ctx.get());
    *out = ctx.release();
    return VD_OK;
  });
}

extern "C" int vd_context_free(vd_context* ctx) {
  if (!ctx) return VD_OK;
  if (tl_executor) return in_callback("vd_context_free");
  if (unsigned n = ctx->disks.load()) {
    return fail(VD_E_BUSY, "vd_context_free: " + std::to_string(n) + " disk(s) of the context not freed");
  }
  // No disk is left, so no request: the executor's run() returns as soon as the guard is gone.
  ctx->guard.reset();
  ctx->thread.join();
  ctx->pool.join();
  delete ctx;
  return VD_OK;
}

// ---- Open and close ----------------------------------------------------------------------------

extern "C" int vd_disk_open(vd_context* ctx, const char* path, const vd_open_options* opts,
                            vd_disk** out) {
  if (!out) return null_argument("vd_disk_open", "out");
  *out = nullptr;
  if (!ctx) return null_argument("vd_disk_open", "context");
  if (!path) return null_argument("vd_disk_open", "path");
  if (tl_executor) return in_callback("vd_disk_open");
  return guarded([&]() -> int {
    vd::DiskOpenOptions o;
    const vd_open_options none{};
    if (!opts) opts = &none;
    if (opts->flags & ~unsigned(VD_OPEN_READ_ONLY | VD_OPEN_NO_BACKING)) {
      return fail(VD_E_INVALID_ARGUMENT, "vd_disk_open: unknown flags");
    }
    if (opts->flags & VD_OPEN_READ_ONLY) o.flags |= vd::open_read_only;
    o.no_backing = opts->flags & VD_OPEN_NO_BACKING;
    if (opts->format) {
      if (!ctx->registry.find(opts->format)) {
        return fail(VD_E_NOT_FOUND, std::string("Unknown file format '") + opts->format + "'");
      }
      o.format = opts->format;
      o.flags |= vd::open_format_given;  // as vdimg -f: the caller named the format
    }
    if (opts->passphrase) o.passphrase = opts->passphrase;
    if (opts->cache_bytes) o.cache_bytes = opts->cache_bytes;
    if (opts->cache) {
      auto mode = vd::parse_cache_mode(opts->cache);
      if (!mode) return fail(VD_E_INVALID_ARGUMENT, "vd_disk_open: " + mode.error().message());
      o.cache = *mode;
    }

    auto d = std::make_unique<vd_disk>(ctx);
    const std::string file = path;
    vd::Error err = run_on_executor(ctx, [&]() -> vd::Error {
      auto r = vd::Disk::open(file, o, ctx->registry, *ctx->files);
      if (!r) return r.error();
      d->disk = std::move(*r);
      const vd::Image& top = d->disk->image(0);
      d->size = d->disk->size();
      d->read_only = d->disk->read_only();
      d->depth = static_cast<unsigned>(d->disk->depth());
      const vd::Geometry p = top.pchs(), l = top.lchs();
      d->pchs = to_c(p.is_set() ? p : vd::derive_pchs(top.size()));
      d->lchs = to_c(l.is_set() ? l : vd::derive_lchs(top.size()));
      d->parent = top.parent_filename();
      return {};
    });
    if (err) {
      // The file is named once: an error without a path gets the one opened.
      if (err.path().empty()) err.image(file);
      return fail(err);
    }
    ctx->disks.fetch_add(1);
    *out = d.release();
    return VD_OK;
  });
}

extern "C" int vd_disk_close(vd_disk* disk) {
  if (int rc = check_disk(disk, "vd_disk_close")) return rc;
  if (tl_executor) return in_callback("vd_disk_close");
  return guarded([&]() -> int {
    {
      std::unique_lock lock(disk->mu);
      if (disk->state != vd_disk::State::open) return fail(VD_E_CLOSED, "the disk is already closed");
      disk->state = vd_disk::State::closing;
      disk->idle.wait(lock, [disk] { return disk->inflight == 0; });
    }
    vd::Error err = run_on_executor(disk->ctx, [disk] {
      vd::Error e = disk->disk->close();
      disk->disk.reset();
      return e;
    });
    {
      std::lock_guard lock(disk->mu);
      disk->state = vd_disk::State::closed;
    }
    return err ? fail(err) : VD_OK;
  });
}

extern "C" int vd_disk_free(vd_disk* disk) {
  if (!disk) return VD_OK;
  if (tl_executor) return in_callback("vd_disk_free");
  int rc = VD_OK;
  bool open;
  {
    std::lock_guard lock(disk->mu);
    open = disk->state == vd_disk::State::open;
  }
  if (open) rc = vd_disk_close(disk);
  if (rc == VD_E_CLOSED) rc = VD_OK;  // closed by another call in between
  // A close that failed to reach the executor (out of memory) leaves the Disk: retry here.
  if (disk->disk) {
    int left = guarded([&]() -> int {
      run_on_executor(disk->ctx, [disk] { disk->disk.reset(); });
      return VD_OK;
    });
    if (left) return left;  // still not freed: the caller may try again
  }
  disk->ctx->disks.fetch_sub(1);
  delete disk;
  return rc;
}

// ---- Properties ------------------------------------------------------------------------------

extern "C" uint64_t vd_disk_size(const vd_disk* disk) { return disk ? disk->size : 0; }

extern "C" int vd_disk_read_only(const vd_disk* disk) { return disk && disk->read_only; }

extern "C" unsigned vd_disk_depth(const vd_disk* disk) { return disk ? disk->depth : 0; }

extern "C" int vd_disk_pchs(const vd_disk* disk, vd_geometry* out) {
  if (int rc = check_disk(disk, "vd_disk_pchs")) return rc;
  if (!out) return null_argument("vd_disk_pchs", "out");
  *out = disk->pchs;
  return VD_OK;
}

extern "C" int vd_disk_lchs(const vd_disk* disk, vd_geometry* out) {
  if (int rc = check_disk(disk, "vd_disk_lchs")) return rc;
  if (!out) return null_argument("vd_disk_lchs", "out");
  *out = disk->lchs;
  return VD_OK;
}

extern "C" size_t vd_disk_parent_filename(const vd_disk* disk, char* buf, size_t size) {
  const std::string empty;
  const std::string& name = disk && disk->parent ? *disk->parent : empty;
  if (buf && size > 0) {
    const size_t n = std::min(name.size(), size - 1);
    std::memcpy(buf, name.data(), n);
    buf[n] = '\0';
  }
  return name.size();
}

// ---- Asynchronous I/O ------------------------------------------------------------------------

extern "C" int vd_disk_read(vd_disk* disk, uint64_t offset, void* buf, size_t length,
                            vd_callback cb, void* user) {
  if (int rc = check_disk(disk, "vd_disk_read")) return rc;
  if (int rc = check_buffer(buf, length, "vd_disk_read")) return rc;
  std::span<std::byte> span(static_cast<std::byte*>(buf), length);
  return submit(disk, cb, user, [offset, span](vd::Disk& d, vd::Completion done) {
    d.read(offset, span, std::move(done));
  });
}

extern "C" int vd_disk_write(vd_disk* disk, uint64_t offset, const void* buf, size_t length,
                             unsigned flags, vd_callback cb, void* user) {
  if (int rc = check_disk(disk, "vd_disk_write")) return rc;
  if (int rc = check_buffer(buf, length, "vd_disk_write")) return rc;
  if (flags & ~unsigned(VD_WRITE_FUA | VD_WRITE_COMPRESSED)) {
    return fail(VD_E_INVALID_ARGUMENT, "vd_disk_write: unknown flags");
  }
  std::span<const std::byte> span(static_cast<const std::byte*>(buf), length);
  return submit(disk, cb, user, [offset, span, flags](vd::Disk& d, vd::Completion done) {
    d.write(offset, span, flags, std::move(done));
  });
}

extern "C" int vd_disk_write_zeroes(vd_disk* disk, uint64_t offset, uint64_t length,
                                    unsigned flags, vd_callback cb, void* user) {
  if (int rc = check_disk(disk, "vd_disk_write_zeroes")) return rc;
  if (flags & ~unsigned(VD_ZERO_MAY_UNMAP)) {
    return fail(VD_E_INVALID_ARGUMENT, "vd_disk_write_zeroes: unknown flags");
  }
  return submit(disk, cb, user, [offset, length, flags](vd::Disk& d, vd::Completion done) {
    d.write_zeroes(offset, length, flags, std::move(done));
  });
}

extern "C" int vd_disk_discard(vd_disk* disk, uint64_t offset, uint64_t length, vd_callback cb,
                               void* user) {
  if (int rc = check_disk(disk, "vd_disk_discard")) return rc;
  return submit(disk, cb, user, [offset, length](vd::Disk& d, vd::Completion done) {
    d.discard(offset, length, std::move(done));
  });
}

extern "C" int vd_disk_flush(vd_disk* disk, vd_callback cb, void* user) {
  if (int rc = check_disk(disk, "vd_disk_flush")) return rc;
  return submit(disk, cb, user, [](vd::Disk& d, vd::Completion done) { d.flush(std::move(done)); });
}

namespace {

// Carries a block status request's C callback through the vd_callback-shaped completion.
struct StatusRequest {
  vd_extent_callback cb;
  void* user;
  vd_extent extent{};

  static void callback(void* self, int error) {
    std::unique_ptr<StatusRequest> r(static_cast<StatusRequest*>(self));
    if (error) r->extent.length = 0, r->extent.flags = 0, r->extent.depth = -1;
    if (r->cb) r->cb(r->user, error, &r->extent);
  }
};

vd_extent to_c(uint64_t offset, const vd::DiskExtent& x) {
  vd_extent e{};
  e.offset = offset;
  e.length = x.extent.length;
  e.depth = x.level;
  using Kind = vd::Extent::Kind;
  // As qemu-img map: allocated where an image holds it; zero unless it is data, or data that
  // reads as zeros; data where stored as data.
  if (x.level >= 0 && x.extent.kind != Kind::unallocated) e.flags |= VD_EXTENT_ALLOCATED;
  if (x.extent.kind != Kind::data || x.extent.zero_data) e.flags |= VD_EXTENT_ZERO;
  if (x.extent.kind == Kind::data) e.flags |= VD_EXTENT_DATA;
  return e;
}

}  // namespace

extern "C" int vd_disk_block_status(vd_disk* disk, uint64_t offset, uint64_t length,
                                    vd_extent_callback cb, void* user) {
  if (int rc = check_disk(disk, "vd_disk_block_status")) return rc;
  return guarded([&]() -> int {
    auto req = std::make_unique<StatusRequest>(StatusRequest{cb, user, {}});
    req->extent.offset = offset;
    req->extent.depth = -1;
    StatusRequest* r = req.get();
    int rc = submit(disk, &StatusRequest::callback, r,
                    [r, offset, length](vd::Disk& d, vd::Completion done) {
                      d.block_status(offset, length, [r, offset, done](vd::Error e, vd::DiskExtent x) {
                        if (!e) r->extent = to_c(offset, x);
                        done(std::move(e));
                      });
                    });
    if (rc == VD_OK) req.release();  // the callback owns it now
    return rc;
  });
}

// ---- Blocking convenience --------------------------------------------------------------------

extern "C" int vd_disk_pread(vd_disk* disk, uint64_t offset, void* buf, size_t length) {
  return blocking(disk, "vd_disk_pread", [&](vd_callback cb, void* user) {
    return vd_disk_read(disk, offset, buf, length, cb, user);
  });
}

extern "C" int vd_disk_pwrite(vd_disk* disk, uint64_t offset, const void* buf, size_t length,
                              unsigned flags) {
  return blocking(disk, "vd_disk_pwrite", [&](vd_callback cb, void* user) {
    return vd_disk_write(disk, offset, buf, length, flags, cb, user);
  });
}

extern "C" int vd_disk_fsync(vd_disk* disk) {
  return blocking(disk, "vd_disk_fsync",
                  [&](vd_callback cb, void* user) { return vd_disk_flush(disk, cb, user); });
}
