// Reading through the chain: the machinery behind Disk::read, Disk::block_status and the
// ParentReaders that give each image the content below it for copy-on-write.
#include <algorithm>
#include <cstring>

#include "backends/common/recycle.h"
#include "host/disk_impl.h"

namespace vd::detail {

void ChainState::post(std::function<void()> fn) {
  if (io) return io->post(std::move(fn));
  // The cheapest image call there is; its completion lands on the images' executor.
  Image& img = top();
  if (img.size() > 0) {
    img.block_status(0, 1, [fn = std::move(fn)](Error, Extent) { fn(); });
  } else {
    img.flush([fn = std::move(fn)](Error) { fn(); });
  }
}

namespace {

Error bad_read_result(const Image& img, uint64_t offset, uint64_t asked, uint64_t got) {
  return Error(Errc::internal, "asked for " + hex(asked) + " bytes, answered " + hex(got) + " bytes")
      .image(img.path())
      .op("read")
      .at(offset);
}

// One read of a range from one level down. Owned by its single pending completion, which
// holds a plain pointer to it (small enough for std::function's inline buffer: no allocation
// per step); finish() is the only exit and frees it. Its memory is recycled (Recycled): no
// heap allocation per request once the first ones are done. A prefix this level does not
// hold becomes a nested ChainRead one level lower.
//
//   step --(level holds range)--> image read --allocated--> step (advance)
//     |                                   \--not allocated--> read_chain(level+1) --> step
//     \--(done, past level size, below base: zeros)--> finish
class ChainRead final : public Recycled<ChainRead> {
 public:
  ChainRead(ChainState& chain, size_t level, uint64_t offset, std::span<std::byte> buf,
            Completion done)
      : chain_(chain), level_(level), offset_(offset), buf_(buf), done_(std::move(done)) {}

  Leave out_;  // set by read_chain_counted before start

  // Runs the first step; with `posted`, a completion due before it returns is posted.
  void start(bool posted) {
    if (!posted) return step();  // may finish, and free this, inside
    starting_ = true;
    step();
    starting_ = false;  // still here: a read is pending, or the posted completion holds this
  }

 private:
  void step() {
    if (pos_ == buf_.size()) return finish({});
    uint64_t off = offset_ + pos_;
    if (level_ >= chain_.depth() || off >= chain_.images[level_]->size()) return fill_zeros();
    Image& img = *chain_.images[level_];
    asked_ = std::min<uint64_t>(buf_.size() - pos_, img.size() - off);
    img.read(off, buf_.subspan(pos_, asked_), [this](Error e, ReadResult r) { handle_read(std::move(e), r); });
  }

  void handle_read(Error e, ReadResult r) {
    if (e) return finish(std::move(e));
    uint64_t off = offset_ + pos_;
    if (r.length == 0 || r.length > asked_) {
      return finish(bad_read_result(*chain_.images[level_], off, asked_, r.length));
    }
    if (r.allocated) {
      pos_ += r.length;
      return step();
    }
    asked_ = r.length;
    read_chain(chain_, level_ + 1, off, buf_.subspan(pos_, r.length), [this](Error e2) {
      if (e2) return finish(std::move(e2));
      pos_ += asked_;
      step();
    });
  }

  // Nobody below holds the rest of the range: past this level's end, or below the base.
  void fill_zeros() {
    std::memset(buf_.data() + pos_, 0, buf_.size() - pos_);
    pos_ = buf_.size();
    finish({});
  }

  void finish(Error e) {
    if (starting_) {
      // Due while start() is on the stack: run from the executor instead, this object kept
      // until then (the posted function holds only the pointer).
      result_ = std::move(e);
      return chain_.post([this] { complete(std::move(result_)); });
    }
    complete(std::move(e));
  }

  // Frees this, then runs the completion (which may start the next read in its memory).
  void complete(Error e) {
    Completion done = std::move(done_);
    Leave out = std::move(out_);
    delete this;
    if (!out.leave) return done(std::move(e));
    auto owner = std::move(out.owner);  // kept until the request has been counted out
    out.leave(owner.get(), done, std::move(e));
  }

  ChainState& chain_;
  const size_t level_;
  const uint64_t offset_;
  const std::span<std::byte> buf_;
  size_t pos_ = 0;
  uint64_t asked_ = 0;  // the length of the read in flight
  bool starting_ = false;
  Error result_;
  Completion done_;
};

class ChainParentReader final : public ParentReader {
 public:
  ChainParentReader(ChainState& chain, size_t level) : chain_(&chain), level_(level) {}

  void read(uint64_t offset, std::span<std::byte> buf, Completion done) override {
    ChainState& chain = *chain_;
    size_t level = level_;
    read_chain(chain, level, offset, buf, std::move(done), true);
  }

 private:
  ChainState* chain_;  // owned by the Disk, which owns the image holding this reader
  size_t level_;
};

}  // namespace

void read_chain(ChainState& chain, size_t level, uint64_t offset, std::span<std::byte> buf,
                Completion done, bool posted) {
  (new ChainRead(chain, level, offset, buf, std::move(done)))->start(posted);
}

void read_chain_counted(ChainState& chain, uint64_t offset, std::span<std::byte> buf, Completion done,
                        Leave out) {
  auto* r = new ChainRead(chain, 0, offset, buf, std::move(done));
  r->out_ = std::move(out);
  r->start(true);
}

void status_chain(ChainState& chain, size_t level, uint64_t offset, uint64_t length,
                  DiskExtentHandler done) {
  if (level >= chain.depth() || offset >= chain.images[level]->size()) {
    // Past this level's end or below the base: zeros that no image holds.
    DiskExtent z;
    z.extent.length = length;
    z.extent.kind = Extent::Kind::zero;
    return done({}, z);
  }
  Image& img = *chain.images[level];
  uint64_t n = std::min(length, img.size() - offset);
  img.block_status(offset, n, [&chain, &img, level, offset, n, done](Error e, Extent x) {
    if (e) return done(std::move(e), {});
    if (x.length == 0 || x.length > n) {
      return done(Error(Errc::internal, "answered " + hex(x.length) + " bytes for " + hex(n))
                      .image(img.path())
                      .op("block status")
                      .at(offset),
                  {});
    }
    // Held here, or held by nobody below (no parent, or a parent shorter than this offset):
    // the answer is this level's, as qemu-img map reports it (depth of the last image
    // covering the offset).
    const bool below = level + 1 < chain.depth() && offset < chain.images[level + 1]->size();
    if (x.kind != Extent::Kind::unallocated || !below) {
      return done({}, DiskExtent{x, static_cast<int>(level)});
    }
    status_chain(chain, level + 1, offset, x.length, done);
  });
}

std::shared_ptr<ParentReader> make_parent_reader(ChainState& chain, size_t level) {
  return std::make_shared<ChainParentReader>(chain, level);
}

}  // namespace vd::detail
