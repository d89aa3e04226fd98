// Image locking against QEMU: qemu-io holding an image keeps vdimg out and the other way
// round, -U shares with a writer, and two opens in one process see each other (OFD locks).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "support/support.h"
#include "vd/disk.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

using vdtest::TempDir;
using vdtest::vdimg;

// Whether an open file other than ours holds a lock on byte `byte` of `path`.
bool byte_locked(const std::string& path, int byte) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  bool held = ::fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
  ::close(fd);
  return held;
}

// qemu-io with the image open, waiting on a pipe for commands until destroyed.
class QemuHolder {
 public:
  QemuHolder(const std::string& image, bool read_only) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[0], 0);
      int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
      if (read_only) ::execlp("qemu-io", "qemu-io", "-r", image.c_str(), nullptr);
      else ::execlp("qemu-io", "qemu-io", image.c_str(), nullptr);
      ::_exit(127);
    }
    ::close(fds[0]);
    in_ = fds[1];
    // Ready once its lock on the consistent-read byte shows.
    for (int i = 0; i < 500 && !byte_locked(image, 100); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ready_ = byte_locked(image, 100);
  }
  ~QemuHolder() {
    if (in_ >= 0) ::close(in_);  // end of input: qemu-io quits
    if (pid_ > 0) {
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  bool ready() const { return ready_; }

 private:
  pid_t pid_ = -1;
  int in_ = -1;
  bool ready_ = false;
};

std::string busy_hint(const std::string& image) {
  return "Is another process using the image [" + image + "]?";
}

class LockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    VD_REQUIRE_QEMU();
    image_ = dir_.file("a.qcow2");
    vdtest::sh("qemu-img create -q -f qcow2 " + image_ + " 1M");
  }

  vd::Result<std::unique_ptr<vd::Disk>> open(unsigned flags) {
    vd::DiskOpenOptions o;
    o.flags = flags;
    return vd::Disk::open(image_, o, registry_, rt_.files());
  }

  TempDir dir_;
  std::string image_;
  vd::Runtime rt_;
  vd::Registry registry_ = vd::Registry::builtin();
};

TEST_F(LockTest, QemuWriterKeepsVdimgOut) {
  QemuHolder q(image_, false);
  ASSERT_TRUE(q.ready());
  auto w = vdimg({"io", "-c", "write 0 512", image_});
  EXPECT_EQ(w.exit_code, 1);
  EXPECT_NE(w.err.find("Failed to get \"write\" lock"), std::string::npos) << w.err;
  EXPECT_NE(w.err.find(busy_hint(image_)), std::string::npos) << w.err;

  auto info = vdimg({"info", image_});
  EXPECT_EQ(info.exit_code, 1);
  EXPECT_NE(info.err.find("Failed to get shared \"write\" lock"), std::string::npos) << info.err;
  EXPECT_NE(info.err.find(busy_hint(image_)), std::string::npos) << info.err;
  // qemu-img's words: "qemu-img: Could not open 'IMG': Failed to get shared "write" lock".
  EXPECT_NE(info.err.find("vdimg: Could not open '" + image_ + "': Failed to get shared \"write\" lock"),
            std::string::npos)
      << info.err;

  auto shared = vdimg({"info", "-U", image_});
  EXPECT_EQ(shared.exit_code, 0) << shared.err;
  EXPECT_NE(shared.out.find("file format: qcow2"), std::string::npos) << shared.out;
  for (auto argv : std::vector<std::vector<std::string>>{
           {"map", "--force-share", image_}, {"check", "-U", image_}, {"compare", "-U", image_, image_},
           {"snapshot", "-l", "-U", image_}, {"io", "-r", "-U", "-c", "read 0 512", image_}}) {
    auto r = vdimg(argv);
    EXPECT_EQ(r.exit_code, 0) << argv[0] << ": " << r.err;
  }
  auto converted = vdimg({"convert", "-U", "-O", "raw", image_, dir_.file("copy.raw")});
  EXPECT_EQ(converted.exit_code, 0) << converted.err;
  // A write cannot be shared.
  auto rw = vdimg({"io", "-U", "-c", "write 0 512", image_});
  EXPECT_EQ(rw.exit_code, 1);
  EXPECT_NE(rw.err.find("force-share=on can only be used with read-only images"), std::string::npos) << rw.err;
  auto repair = vdimg({"check", "-U", "-r", "all", image_});
  EXPECT_NE(repair.err.find("force-share=on can only be used with read-only images"), std::string::npos)
      << repair.err;
}

TEST_F(LockTest, QemuReaderKeepsWritersOutButNotReaders) {
  QemuHolder q(image_, true);
  ASSERT_TRUE(q.ready());
  auto w = vdimg({"io", "-c", "write 0 512", image_});
  EXPECT_EQ(w.exit_code, 1);
  EXPECT_NE(w.err.find("Failed to get \"write\" lock"), std::string::npos) << w.err;
  auto info = vdimg({"info", image_});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  // Creating over an image in use leaves it intact, as qemu-img create does.
  auto size = vdtest::file_size(image_);
  auto c = vdimg({"create", "-f", "raw", image_, "4M"});
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.err.find("Failed to get \"write\" lock"), std::string::npos) << c.err;
  EXPECT_EQ(vdtest::file_size(image_), size);
}

TEST_F(LockTest, VdWriterKeepsQemuOut) {
  auto d = open(0);
  ASSERT_TRUE(d) << d.error().message();
  auto w = vdtest::run({"qemu-io", "-c", "write 0 512", image_});
  EXPECT_NE(w.exit_code, 0);
  EXPECT_NE(w.err.find("Failed to get \"write\" lock"), std::string::npos) << w.err;
  auto info = vdtest::run({"qemu-img", "info", image_});
  EXPECT_NE(info.exit_code, 0);
  EXPECT_NE(info.err.find("Failed to get shared \"write\" lock"), std::string::npos) << info.err;
  auto shared = vdtest::run({"qemu-img", "info", "-U", image_});
  EXPECT_EQ(shared.exit_code, 0) << shared.err;
  ASSERT_FALSE((*d)->close());
  d->reset();
  auto again = vdtest::run({"qemu-io", "-c", "write 0 512", image_});
  EXPECT_EQ(again.exit_code, 0) << again.err;
}

TEST_F(LockTest, VdReaderKeepsQemuWriterOut) {
  auto d = open(vd::open_read_only);
  ASSERT_TRUE(d) << d.error().message();
  auto w = vdtest::run({"qemu-io", "-c", "write 0 512", image_});
  EXPECT_NE(w.exit_code, 0);
  EXPECT_NE(w.err.find("Failed to get \"write\" lock"), std::string::npos) << w.err;
  auto r = vdtest::run({"qemu-io", "-r", "-c", "read 0 512", image_});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  (*d)->close();
  d->reset();
  // Force-shared, a reader keeps no writer out.
  auto s = open(vd::open_read_only | vd::open_force_share);
  ASSERT_TRUE(s) << s.error().message();
  auto w2 = vdtest::run({"qemu-io", "-c", "write 0 512", image_});
  EXPECT_EQ(w2.exit_code, 0) << w2.err;
}

TEST_F(LockTest, TwoOpensInOneProcess) {
  auto a = open(0);
  ASSERT_TRUE(a) << a.error().message();
  auto b = open(0);
  ASSERT_FALSE(b);
  EXPECT_TRUE(b.error().is(vd::Errc::busy)) << b.error().message();
  EXPECT_NE(b.error().message().find(busy_hint(image_)), std::string::npos) << b.error().message();
  auto ro = open(vd::open_read_only);
  ASSERT_FALSE(ro);
  EXPECT_NE(ro.error().message().find("Failed to get shared \"write\" lock"), std::string::npos)
      << ro.error().message();
  auto shared = open(vd::open_read_only | vd::open_force_share);
  EXPECT_TRUE(shared) << shared.error().message();
  auto unlocked = open(vd::open_no_lock);
  EXPECT_TRUE(unlocked) << unlocked.error().message();
  auto rw_shared = open(vd::open_force_share);
  ASSERT_FALSE(rw_shared);
  EXPECT_NE(rw_shared.error().message().find("force-share=on can only be used with read-only images"),
            std::string::npos);
  ASSERT_FALSE((*a)->close());
  a->reset();
  auto c = open(0);
  EXPECT_TRUE(c) << c.error().message();
  // Readers share with readers.
  (*c)->close();
  c->reset();
  auto r1 = open(vd::open_read_only);
  auto r2 = open(vd::open_read_only);
  EXPECT_TRUE(r1 && r2);
}

// A backing file is opened as qemu opens it: read-only, keeping writers out, and a chain
// can be opened twice for reading.
TEST_F(LockTest, BackingFileIsHeldReadOnly) {
  std::string top = dir_.file("top.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 " + top);
  vd::DiskOpenOptions o;
  auto d = vd::Disk::open(top, o, registry_, rt_.files());
  ASSERT_TRUE(d) << d.error().message();
  auto w = vdtest::run({"qemu-io", "-c", "write 0 512", image_});
  EXPECT_NE(w.err.find("Failed to get \"write\" lock"), std::string::npos) << w.err;
  auto info = vdtest::run({"qemu-img", "info", image_});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  // vdimg commit opens the top alone and the backing file read-write: free once closed.
  (*d)->close();
  d->reset();
  vdtest::sh("qemu-io -c 'write -P 7 0 64k' " + top + " >/dev/null");
  auto commit = vdimg({"commit", top});
  EXPECT_EQ(commit.exit_code, 0) << commit.err;
  auto check = vdtest::run({"qemu-io", "-c", "read -P 7 0 64k", image_});
  EXPECT_EQ(check.exit_code, 0) << check.err;
  EXPECT_EQ(check.out.find("Pattern verification failed"), std::string::npos) << check.out;
}

}  // namespace
