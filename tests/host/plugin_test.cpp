// Plugins: a shared object adds formats through vd_plugin_entry_v1 (vd/plugin.h).
#include <gtest/gtest.h>
#include <stdlib.h>

#include "support/support.h"
#include "vd/plugin.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Sets an environment variable for one test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

TEST(PluginTest, LoadRegistersPlugtestBeforeRaw) {
  vd::Registry r = vd::Registry::builtin();
  vd::Error e = r.load_plugin(vdtest::plugin_path());
  ASSERT_FALSE(e) << e.message();
  const vd::Backend* b = r.find("plugtest");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(r.backends().back()->name(), "raw");
}

TEST(PluginTest, CreateWriteReadAndProbeThroughPlugin) {
  vd::Registry r = vd::Registry::builtin();
  ASSERT_FALSE(r.load_plugin(vdtest::plugin_path()));
  vd::Runtime rt(1);
  vdtest::TempDir dir;
  std::string path = dir.file("a.plug");
  const vd::Backend* b = r.find("plugtest");
  ASSERT_NE(b, nullptr);
  {
    vd::CreateOptions o;
    o.size = 1 << 20;
    auto img = b->create(path, o, rt.files());
    ASSERT_TRUE(img) << img.error().message();
    EXPECT_EQ((*img)->size(), 1u << 20);
    auto data = vdtest::pattern(8192, 7);
    ASSERT_FALSE(vd::sync_image_write(rt, **img, 4096, data));
    ASSERT_FALSE((*img)->close(false));
  }
  auto probed = r.probe(path, rt.files());
  ASSERT_TRUE(probed) << probed.error().message();
  EXPECT_EQ((*probed)->name(), "plugtest");
  vd::OpenOptions ro;
  ro.flags = vd::open_read_only;
  auto img = (*probed)->open(path, ro, rt.files());
  ASSERT_TRUE(img) << img.error().message();
  std::vector<std::byte> back(8192);
  ASSERT_FALSE(vd::sync_image_read(rt, **img, 4096, back));
  EXPECT_EQ(back, vdtest::pattern(8192, 7));
  EXPECT_FALSE((*img)->close(false));
}

TEST(PluginTest, MissingLibraryGivesClearError) {
  vd::Registry r;
  vdtest::TempDir dir;
  std::string path = dir.file("nosuch.so");
  vd::Error e = r.load_plugin(path);
  ASSERT_TRUE(e);
  EXPECT_TRUE(e.is(vd::Errc::not_found));
  EXPECT_TRUE(contains(e.message(), path)) << e.message();
  EXPECT_TRUE(r.backends().empty());
}

TEST(PluginTest, LibraryWithoutEntryPointIsRefused) {
  // Any shared object that is not a vd plugin will do: zlib is always there.
  vd::Registry r;
  vd::Error e = r.load_plugin("libz.so.1");
  ASSERT_TRUE(e);
  EXPECT_TRUE(e.is(vd::Errc::not_supported)) << e.message();
  EXPECT_TRUE(contains(e.message(), "libz.so.1")) << e.message();
  EXPECT_TRUE(contains(e.message(), VD_PLUGIN_ENTRY_V1)) << e.message();
  EXPECT_TRUE(r.backends().empty());
}

TEST(PluginTest, WrongAbiVersionIsRefused) {
  ScopedEnv env("VD_TEST_PLUGIN_ABI", "999");
  vd::Registry r = vd::Registry::builtin();
  size_t before = r.backends().size();
  vd::Error e = r.load_plugin(vdtest::plugin_path());
  ASSERT_TRUE(e);
  EXPECT_TRUE(e.is(vd::Errc::not_supported)) << e.message();
  EXPECT_TRUE(contains(e.message(), "999")) << e.message();
  EXPECT_TRUE(contains(e.message(), vdtest::plugin_path())) << e.message();
  EXPECT_EQ(r.backends().size(), before);
  EXPECT_EQ(r.find("plugtest"), nullptr);
}

TEST(PluginTest, LoadingTwiceRefusesDuplicateName) {
  vd::Registry r = vd::Registry::builtin();
  ASSERT_FALSE(r.load_plugin(vdtest::plugin_path()));
  size_t before = r.backends().size();
  vd::Error e = r.load_plugin(vdtest::plugin_path());
  ASSERT_TRUE(e);
  EXPECT_TRUE(e.is(vd::Errc::exists)) << e.message();
  EXPECT_TRUE(contains(e.message(), "plugtest")) << e.message();
  EXPECT_EQ(r.backends().size(), before);
}

TEST(PluginTest, RegistryMoveKeepsPluginLoaded) {
  vd::Registry moved;
  {
    vd::Registry r = vd::Registry::builtin();
    ASSERT_FALSE(r.load_plugin(vdtest::plugin_path()));
    moved = std::move(r);
  }
  const vd::Backend* b = moved.find("plugtest");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->name(), "plugtest");  // calls into the library: still mapped
}

}  // namespace
