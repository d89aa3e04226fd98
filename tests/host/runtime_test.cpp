// Runtime::wait and the synchronous image helpers.
#include <gtest/gtest.h>

#include <boost/asio/post.hpp>
#include <chrono>
#include <cstring>
#include <thread>

#include "backends/builtin.h"
#include "support/support.h"
#include "vd/runtime.h"

namespace {

using vd::Errc;
using vd::Error;

TEST(RuntimeTest, WaitReturnsTheCompletionsError) {
  vd::Runtime rt(1);
  Error e = rt.wait([&](vd::Completion done) {
    boost::asio::post(rt.executor(), [done] { done(Error(Errc::corrupt, "bad L2 table")); });
  });
  EXPECT_TRUE(e.is(Errc::corrupt));
  EXPECT_EQ(e.message(), "bad L2 table");
}

TEST(RuntimeTest, WaitReturnsSuccessAndCanRunAgain) {
  vd::Runtime rt(1);
  for (int i = 0; i < 3; ++i) {
    Error e = rt.wait([&](vd::Completion done) {
      boost::asio::post(rt.executor(), [done] { done(Error{}); });
    });
    EXPECT_FALSE(e) << e.message();
  }
}

TEST(RuntimeTest, LostCompletionReturnsInternalError) {
  vd::Runtime rt(1);
  Error e = rt.wait([](vd::Completion) {});
  EXPECT_TRUE(e.is(Errc::internal)) << e.message();
}

TEST(RuntimeTest, CompletionDroppedByPostedHandlerReturnsInternalError) {
  vd::Runtime rt(1);
  Error e = rt.wait([&](vd::Completion done) {
    boost::asio::post(rt.executor(), [done] { (void)done; });
  });
  EXPECT_TRUE(e.is(Errc::internal)) << e.message();
  // The runtime is still usable afterwards.
  Error ok = rt.wait([&](vd::Completion d) { boost::asio::post(rt.executor(), [d] { d({}); }); });
  EXPECT_FALSE(ok);
}

TEST(RuntimeTest, SecondCompletionIsIgnored) {
  vd::Runtime rt(1);
  Error e = rt.wait([&](vd::Completion done) {
    boost::asio::post(rt.executor(), [done] {
      done(Error(Errc::io, "first"));
      done(Error{});
    });
  });
  EXPECT_TRUE(e.is(Errc::io));
}

TEST(RuntimeTest, WaitBlocksWhileFileIoIsOnThePool) {
  vdtest::TempDir dir;
  vd::Runtime rt;  // default thread count
  auto f = rt.files().open(dir.file("a"), vd::file_read | vd::file_write | vd::file_create);
  ASSERT_TRUE(f.ok());
  auto data = vdtest::pattern(1 << 20, 3);
  Error e = rt.wait([&](vd::Completion done) {
    (*f)->async_write(vd::IoKind::data, 0, data, [&, done](Error err) {
      if (err) return done(err);
      (*f)->async_flush(done);
    });
  });
  EXPECT_FALSE(e) << e.message();
  EXPECT_EQ(vdtest::read_file(dir.file("a")), data);
}

// ---- sync_image_read / sync_image_write --------------------------------------------------

// An image that answers reads in 100-byte pieces, alternately held (0xab) and not held,
// and records writes. Everything else is inert.
class PieceImage final : public vd::Image {
 public:
  explicit PieceImage(boost::asio::any_io_executor ex) : ex_(std::move(ex)) {}
  const vd::Backend& backend() const override { return vd::backends::raw(); }
  const std::string& path() const override { return path_; }
  unsigned open_flags() const override { return 0; }
  unsigned version() const override { return 0; }
  uint64_t size() const override { return 1 << 20; }
  vd::Result<uint64_t> file_size() override { return uint64_t{0}; }
  uint32_t cluster_size() const override { return 512; }
  void read(uint64_t offset, std::span<std::byte> buf, vd::ReadHandler done) override {
    uint64_t len = std::min<uint64_t>(buf.size(), 100 - offset % 100);
    bool held = (offset / 100) % 2 == 0;
    if (held) std::memset(buf.data(), 0xab, len);
    boost::asio::post(ex_, [done, len, held] { done({}, vd::ReadResult{len, held}); });
  }
  void write(uint64_t offset, std::span<const std::byte> buf, unsigned,
             vd::Completion done) override {
    written.assign(buf.begin(), buf.end());
    written_at = offset;
    boost::asio::post(ex_, [done] { done({}); });
  }
  void write_zeroes(uint64_t, uint64_t, unsigned, vd::Completion) override {}
  void discard(uint64_t, uint64_t, vd::Completion) override {}
  void flush(vd::Completion) override {}
  void block_status(uint64_t, uint64_t, vd::ExtentHandler) override {}
  void set_parent_reader(std::shared_ptr<vd::ParentReader>) override {}
  vd::Geometry pchs() const override { return {}; }
  Error set_pchs(const vd::Geometry&) override { return {}; }
  vd::Geometry lchs() const override { return {}; }
  Error set_lchs(const vd::Geometry&) override { return {}; }
  std::optional<std::string> parent_filename() const override { return {}; }
  std::optional<std::string> parent_format() const override { return {}; }
  Error set_parent(const std::optional<std::string>&, const std::optional<std::string>&) override {
    return {};
  }
  Error resize(uint64_t, const vd::ResizeOptions&) override { return {}; }
  std::vector<vd::InfoField> format_info() const override { return {}; }
  bool encrypted() const override { return false; }
  std::vector<vd::SnapshotInfo> snapshots() const override { return {}; }
  vd::Result<vd::CheckReport> check(vd::RepairMode) override { return vd::CheckReport{}; }
  Error close(bool) override { return {}; }

  std::vector<std::byte> written;
  uint64_t written_at = 0;

 private:
  boost::asio::any_io_executor ex_;
  std::string path_ = "piece.img";
};

TEST(SyncImageTest, ReadLoopsOverPiecesAndZeroFillsUnallocated) {
  vd::Runtime rt(1);
  PieceImage img(rt.executor());
  std::vector<std::byte> buf(450, std::byte{0x11});
  ASSERT_FALSE(vd::sync_image_read(rt, img, 50, buf));
  for (size_t i = 0; i < buf.size(); ++i) {
    bool held = ((50 + i) / 100) % 2 == 0;
    ASSERT_EQ(buf[i], held ? std::byte{0xab} : std::byte{0}) << "at byte " << i;
  }
}

TEST(SyncImageTest, WritePassesTheWholeBuffer) {
  vd::Runtime rt(1);
  PieceImage img(rt.executor());
  auto data = vdtest::pattern(3000, 4);
  ASSERT_FALSE(vd::sync_image_write(rt, img, 77, data));
  EXPECT_EQ(img.written, data);
  EXPECT_EQ(img.written_at, 77u);
}

}  // namespace

namespace {

// offload runs the work on the pool, not on the thread running the executor, then the
// continuation back on that thread; wait keeps running while the work is on the pool.
TEST(RuntimeTest, OffloadRunsWorkOnThePoolAndThenOnTheExecutor) {
  vd::Runtime rt(2);
  const auto executor_thread = std::this_thread::get_id();
  std::thread::id work_thread, then_thread;
  Error e = rt.wait([&](vd::Completion done) {
    rt.files().offload(
        [&] {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          work_thread = std::this_thread::get_id();
        },
        [&, done] {
          then_thread = std::this_thread::get_id();
          done({});
        });
  });
  EXPECT_FALSE(e) << e.message();
  EXPECT_NE(work_thread, std::thread::id{});
  EXPECT_NE(work_thread, executor_thread);
  EXPECT_EQ(then_thread, executor_thread);
}

}  // namespace
