// vd::Disk: a chain of images seen as one virtual disk. Reads go through the chain
// (host/disk_chain.cpp); writes, zeroing, discard and flush go to the top image, which
// fills partial clusters from below through the ParentReader attached here.
//
// Every request enters through Impl::run (onto the executor) and Impl::enter (counted in
// flight, refused after close); its completion counts it out. That count is what drain,
// async_close and a Disk destroyed mid-I/O wait for.
#include "vd/disk.h"

#include <algorithm>
#include <boost/asio/post.hpp>

#include "backends/common/recycle.h"
#include "host/disk_impl.h"

namespace vd {
namespace {

// Overflow-safe: offset + length may not be computed before the comparison.
Error check_range(const Image& top, const char* op, uint64_t offset, uint64_t length) {
  uint64_t size = top.size();
  if (offset <= size && length <= size - offset) return {};
  return Error(Errc::out_of_range, hex(length) + " bytes go beyond the end of the disk (virtual size " +
                                       hex(size) + ")")
      .image(top.path())
      .op(op)
      .at(offset);
}

Error check_writable(const Image& top, const char* op, uint64_t offset, uint64_t length) {
  if (top.open_flags() & open_read_only)
    return Error(Errc::read_only, "the image is opened read-only").image(top.path()).op(op).at(offset);
  return check_range(top, op, offset, length);
}

class AsioCategory final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "vd"; }
  std::string message(int ev) const override { return vd_category().message(ev); }
};

}  // namespace

const boost::system::error_category& asio_category() noexcept {
  static const AsioCategory c;
  return c;
}

boost::system::error_code to_asio(const Error& e) noexcept {
  if (!e) return {};
  const int v = e.kind() != Errc{} ? static_cast<int>(e.kind()) : static_cast<int>(Errc::io);
  return {v, asio_category()};
}

// ---- The Impl: executor, requests in flight, close --------------------------------------

// Posts to the executor, or through the provider; never through a closed image (the last
// resort of ChainState::post). With neither known, runs inline: such a Disk (assembled
// without a provider) belongs to a caller that keeps to one thread.
void Disk::Impl::post(std::function<void()> fn) {
  if (ex) return boost::asio::post(ex, std::move(fn));
  if (chain.io || !chain.closed) return chain.post(std::move(fn));
  fn();
}

Completion Disk::Impl::enter(const char* op, Completion done) {
  if (state != State::open) {
    Error e = Error(Errc::canceled, "the disk is closed").op(op);
    if (!chain.images.empty()) e.image(chain.top().path());
    post([done = std::move(done), e] { done(e); });
    return {};
  }
  ++in_flight;
  // The request's way out waits in a recycled Entry, and the completion returned holds only a
  // pointer to it (inline in std::function): no heap allocation per request. Run exactly once
  // (vd/io.h); it keeps the Impl alive until then.
  struct Entry final : detail::Recycled<Entry> {
    Entry(std::shared_ptr<Impl> s, Completion d) : self(std::move(s)), done(std::move(d)) {}
    std::shared_ptr<Impl> self;
    Completion done;
  };
  auto* entry = new Entry(shared_from_this(), std::move(done));
  return [entry](Error e) {
    std::shared_ptr<Impl> self = std::move(entry->self);
    Completion d = std::move(entry->done);
    delete entry;
    --self->in_flight;
    d(std::move(e));
    self->idle_check();
  };
}

// Nothing in flight any more: wake the drains, and finish a close that was waiting.
void Disk::Impl::idle_check() {
  if (in_flight != 0) return;
  for (auto& w : std::exchange(drain_waiters, {})) post([w = std::move(w)] { w({}); });
  if (state != State::closing || close_started || (close_waiters.empty() && !close_when_idle)) return;
  close_started = true;
  // The flush does the writing without blocking the executor; the images' close that
  // follows has nothing left to write but a final barrier.
  if (chain.closed || (chain.top().open_flags() & open_read_only)) return finish_close({});
  chain.top().flush([self = shared_from_this()](Error e) { self->finish_close(std::move(e)); });
}

void Disk::Impl::finish_close(Error flushed) {
  Error e = close_images();
  if (flushed) e = std::move(flushed);  // the first error
  for (auto& w : std::exchange(close_waiters, {})) post([w = std::move(w), e] { w(e); });
}

// Image::close flushes first. Top first: it is the only one that may hold dirty data, and it
// may still read its parents while flushing. (Synchronous: nothing is in flight.)
Error Disk::Impl::close_images() {
  state = State::closed;
  if (chain.closed) return {};
  chain.closed = true;
  Error first;
  for (auto& img : chain.images) {
    Error e = img->close(false);
    if (e && !first) first = std::move(e);
  }
  return first;
}

// ---- Disk ----------------------------------------------------------------------------------

Disk::Disk(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Disk::~Disk() {
  if (!impl_) return;
  if (impl_->in_flight == 0) {
    (void)impl_->close_images();
    return;
  }
  // Requests in flight hold the Impl: the last one to complete closes the images.
  impl_->state = Impl::State::closing;
  impl_->close_when_idle = true;
}

Result<std::unique_ptr<Disk>> Disk::assemble(std::vector<std::unique_ptr<Image>> chain, IoProvider* io) {
  if (chain.empty()) return Error(Errc::invalid_argument, "a disk needs at least one image");
  for (size_t i = 0; i < chain.size(); ++i) {
    if (!chain[i]) {
      return Error(Errc::invalid_argument, "image " + std::to_string(i) + " of the chain is null");
    }
  }
  auto impl = std::make_shared<Impl>();
  impl->chain.images = std::move(chain);
  impl->chain.io = io;
  // Every image but the base reads what lies below it through the chain.
  for (size_t i = 0; i + 1 < impl->chain.depth(); ++i) {
    impl->chain.images[i]->set_parent_reader(detail::make_parent_reader(impl->chain, i + 1));
  }
  return std::unique_ptr<Disk>(new Disk(std::move(impl)));
}

Disk::executor_type Disk::get_executor() const { return impl_->ex; }
void Disk::set_executor(executor_type ex) { impl_->ex = std::move(ex); }

uint64_t Disk::size() const { return impl_->chain.images.front()->size(); }
size_t Disk::depth() const { return impl_->chain.depth(); }
// Precondition: level < depth().
Image& Disk::image(size_t level) { return *impl_->chain.images[level]; }
const Image& Disk::image(size_t level) const { return *impl_->chain.images[level]; }
bool Disk::read_only() const { return image(0).open_flags() & open_read_only; }
bool Disk::closed() const { return impl_->state != Impl::State::open; }
size_t Disk::in_flight() const { return impl_->in_flight; }

void Disk::read(uint64_t offset, std::span<std::byte> buf, Completion done) {
  impl_->run([impl = impl_, offset, buf, done = std::move(done)]() mutable {
    detail::ChainState& chain = impl->chain;
    Error err = check_range(chain.top(), "read", offset, buf.size());
    if (err || impl->state != Impl::State::open) {
      Completion c = impl->enter("read", std::move(done));
      if (c) chain.post([c = std::move(c), err] { c(err); });
      return;
    }
    // Counted in here and out by the read itself (enter's wrapper, without its allocation).
    ++impl->in_flight;
    detail::read_chain_counted(chain, offset, buf, std::move(done),
                               detail::Leave{std::move(impl), [](void* owner, Completion& d, Error e) {
                                               auto* self = static_cast<Impl*>(owner);
                                               --self->in_flight;
                                               d(std::move(e));
                                               self->idle_check();
                                             }});
  });
}

void Disk::write(uint64_t offset, std::span<const std::byte> buf, unsigned flags, Completion done) {
  impl_->run([impl = impl_, offset, buf, flags, done = std::move(done)]() mutable {
    Completion c = impl->enter("write", std::move(done));
    if (!c) return;
    Image& top = impl->chain.top();
    Error err = check_writable(top, "write", offset, buf.size());
    if (err || buf.empty()) return impl->chain.post([c = std::move(c), err] { c(err); });
    top.write(offset, buf, flags, std::move(c));
  });
}

void Disk::write_zeroes(uint64_t offset, uint64_t length, unsigned flags, Completion done) {
  impl_->run([impl = impl_, offset, length, flags, done = std::move(done)]() mutable {
    Completion c = impl->enter("write zeroes", std::move(done));
    if (!c) return;
    Image& top = impl->chain.top();
    Error err = check_writable(top, "write zeroes", offset, length);
    if (err || length == 0) return impl->chain.post([c = std::move(c), err] { c(err); });
    top.write_zeroes(offset, length, flags, std::move(c));
  });
}

void Disk::discard(uint64_t offset, uint64_t length, Completion done) {
  impl_->run([impl = impl_, offset, length, done = std::move(done)]() mutable {
    Completion c = impl->enter("discard", std::move(done));
    if (!c) return;
    Image& top = impl->chain.top();
    Error err = check_writable(top, "discard", offset, length);
    if (err || length == 0) return impl->chain.post([c = std::move(c), err] { c(err); });
    top.discard(offset, length, std::move(c));
  });
}

void Disk::flush(Completion done) {
  impl_->run([impl = impl_, done = std::move(done)]() mutable {
    Completion c = impl->enter("flush", std::move(done));
    if (!c) return;
    // Parents are read-only: only the top can hold data that is not durable yet.
    impl->chain.top().flush(std::move(c));
  });
}

void Disk::block_status(uint64_t offset, uint64_t length, DiskExtentHandler done) {
  impl_->run([impl = impl_, offset, length, done = std::move(done)]() mutable {
    // Counted like the others; the extent travels beside the error.
    auto extent = std::make_shared<DiskExtent>();
    Completion c = impl->enter("block status", [extent, done](Error e) { done(e, e ? DiskExtent{} : *extent); });
    if (!c) return;
    detail::ChainState& chain = impl->chain;
    Image& top = chain.top();
    Error err = offset < top.size() ? Error()
                                    : Error(Errc::out_of_range, "beyond the end of the disk (virtual size " +
                                                                    hex(top.size()) + ")")
                                          .image(top.path())
                                          .op("block status")
                                          .at(offset);
    // Like qemu, a range running past the end is clipped to it.
    if (!err) length = std::min(length, top.size() - offset);
    detail::start_posted(
        chain,
        [&](Completion h) {
          if (err) return h(err);
          if (length == 0) return h({});
          detail::status_chain(chain, 0, offset, length, [extent, h](Error e, DiskExtent x) {
            *extent = x;
            h(e);
          });
        },
        std::move(c));
  });
}

void Disk::drain(Completion done) {
  impl_->run([impl = impl_, done = std::move(done)]() mutable {
    if (impl->in_flight == 0) return impl->post([done = std::move(done)] { done({}); });
    impl->drain_waiters.push_back(std::move(done));
  });
}

void Disk::async_close(Completion done) {
  impl_->run([impl = impl_, done = std::move(done)]() mutable {
    if (impl->state == Impl::State::closed) return impl->post([done = std::move(done)] { done({}); });
    impl->state = Impl::State::closing;  // new requests are refused from now on
    impl->close_waiters.push_back(std::move(done));
    impl->idle_check();
  });
}

Error Disk::close() {
  Impl& impl = *impl_;
  if (impl.state == Impl::State::closed) return {};
  if (impl.in_flight > 0)
    return Error(Errc::busy, std::to_string(impl.in_flight) +
                                 " requests in flight: drain first, or close asynchronously (async_close)")
        .image(impl.chain.top().path())
        .op("close");
  return impl.close_images();
}

}  // namespace vd
