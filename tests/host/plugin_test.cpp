// Plugins: a shared object adds formats through VD_PLUGIN_ENTRY (vd/plugin.h); one built for
// another plugin ABI is refused before anything of it is called. Also vdimg's --plugin and
// VD_PLUGIN_PATH. (The header fingerprint is checked by the ctest test abi.fingerprint.)
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

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
  EXPECT_TRUE(contains(e.message(), "not a vd plugin for ABI " + std::to_string(VD_PLUGIN_ABI_VERSION))) << e.message();
  EXPECT_TRUE(contains(e.message(), VD_PLUGIN_ENTRY_NAME)) << e.message();
  EXPECT_TRUE(r.backends().empty());
}

// A refused plugin leaves the registry as it was.
void expect_refused(const std::string& plugin, const std::vector<std::string>& parts) {
  vd::Registry r = vd::Registry::builtin();
  size_t before = r.backends().size();
  vd::Error e = r.load_plugin(plugin);
  ASSERT_TRUE(e);
  EXPECT_TRUE(e.is(vd::Errc::not_supported)) << e.message();
  EXPECT_TRUE(contains(e.message(), plugin)) << e.message();
  for (const auto& part : parts) EXPECT_TRUE(contains(e.message(), part)) << e.message();
  EXPECT_EQ(r.backends().size(), before);
  EXPECT_EQ(r.find("plugtest"), nullptr);
}

TEST(PluginTest, AbiVersionIsInTheEntryPointName) {
  EXPECT_STREQ(VD_PLUGIN_ENTRY_NAME, "vd_plugin_entry_v" VD_PLUGIN_STR(VD_PLUGIN_ABI_VERSION));
  EXPECT_EQ(VD_PLUGIN_ABI_VERSION, 4);
}

TEST(PluginTest, PluginForOldAbiIsRefusedWithoutCallingIt) {
  // Its vd_plugin_entry_v1 aborts if called: the name alone refuses it.
  expect_refused(VD_TEST_PLUGIN_OLD_ABI_PATH,
                 {"plugin was built for vd plugin ABI 1; this vd needs " VD_PLUGIN_STR(VD_PLUGIN_ABI_VERSION), "rebuild"});
}

TEST(PluginTest, PluginBuiltAgainstOtherHeadersIsRefused) {
  expect_refused(VD_TEST_PLUGIN_OTHER_HEADERS_PATH,
                 {"other vd plugin headers", "fnv1a64-0123456789abcdef",
                  VD_PLUGIN_ABI_FINGERPRINT});
}

TEST(PluginTest, WrongAbiVersionInTableIsRefused) {
  ScopedEnv env("VD_TEST_PLUGIN_ABI", "999");
  expect_refused(vdtest::plugin_path(), {"plugin was built for vd plugin ABI 999; this vd needs " VD_PLUGIN_STR(VD_PLUGIN_ABI_VERSION)});
}

TEST(PluginTest, WrongTableSizeIsRefused) {
  ScopedEnv env("VD_TEST_PLUGIN_STRUCT_SIZE", "16");
  expect_refused(vdtest::plugin_path(), {"plugin table is 16 bytes"});
}

TEST(PluginTest, OtherCompilerAbiIsRefused) {
  ScopedEnv env("VD_TEST_PLUGIN_COMPILER_ABI", "libc++ abi 1, 4-byte pointers");
  expect_refused(vdtest::plugin_path(),
                 {"another C++ runtime", "libc++ abi 1, 4-byte pointers", VD_PLUGIN_COMPILER_ABI});
}

TEST(PluginTest, LoadPluginsTakesFilesAndFolders) {
  std::string folder = std::filesystem::path(vdtest::plugin_path()).parent_path();
  vd::Registry r = vd::Registry::builtin();
  vd::Error e = r.load_plugins("::" + folder + ":");  // empty entries are skipped
  ASSERT_FALSE(e) << e.message();
  EXPECT_NE(r.find("plugtest"), nullptr);

  vd::Registry refused = vd::Registry::builtin();
  size_t before = refused.backends().size();
  std::string bad = std::filesystem::path(VD_TEST_PLUGIN_OLD_ABI_PATH).parent_path();
  e = refused.load_plugins(bad);
  ASSERT_TRUE(e);
  EXPECT_TRUE(contains(e.message(), "libvd_test_plugin_")) << e.message();
  EXPECT_EQ(refused.backends().size(), before);
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

// ---- vdimg --plugin / VD_PLUGIN_PATH ----

TEST(PluginTest, VdimgPluginOptionLoadsTheFormat) {
  vdtest::TempDir dir;
  std::string image = dir.file("a.plug");
  auto created = vdtest::vdimg({"--plugin", vdtest::plugin_path(), "create", "-f", "plugtest",
                                image, "1M"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  auto info = vdtest::vdimg({"--plugin=" + vdtest::plugin_path(), "info", image});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_TRUE(contains(info.out, "file format: plugtest")) << info.out;
  EXPECT_TRUE(contains(info.out, "(1048576 bytes)")) << info.out;
  // Without the plugin the format is unknown.
  auto plain = vdtest::vdimg({"create", "-f", "plugtest", dir.file("b.plug"), "1M"});
  EXPECT_NE(plain.exit_code, 0);
}

TEST(PluginTest, VdimgLoadsPluginsFromEnvironment) {
  vdtest::TempDir dir;
  std::string image = dir.file("a.plug");
  std::string folder = std::filesystem::path(vdtest::plugin_path()).parent_path();
  auto created = vdtest::run({"/usr/bin/env", "VD_PLUGIN_PATH=" + vdtest::plugin_path(),
                              vdtest::vdimg_path(), "create", "-f", "plugtest", image, "64k"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  auto info = vdtest::run({"/usr/bin/env", "VD_PLUGIN_PATH=" + folder, vdtest::vdimg_path(),
                           "info", image});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_TRUE(contains(info.out, "file format: plugtest")) << info.out;
}

TEST(PluginTest, VdimgRefusesMismatchedPluginAndExits) {
  vdtest::TempDir dir;
  std::string image = dir.file("a.raw");
  vdtest::write_file(image, std::vector<std::byte>(4096));
  auto r = vdtest::vdimg({"--plugin", VD_TEST_PLUGIN_OLD_ABI_PATH, "info", image});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.err, VD_TEST_PLUGIN_OLD_ABI_PATH)) << r.err;
  EXPECT_TRUE(contains(r.err, "built for vd plugin ABI 1; this vd needs " VD_PLUGIN_STR(VD_PLUGIN_ABI_VERSION))) << r.err;
  EXPECT_FALSE(contains(r.out, "image:")) << r.out;  // the command did not run

  auto env = vdtest::run({"/usr/bin/env", std::string("VD_PLUGIN_PATH=") +
                          VD_TEST_PLUGIN_OTHER_HEADERS_PATH, vdtest::vdimg_path(), "info", image});
  EXPECT_NE(env.exit_code, 0);
  EXPECT_TRUE(contains(env.err, "VD_PLUGIN_PATH")) << env.err;
  EXPECT_TRUE(contains(env.err, VD_TEST_PLUGIN_OTHER_HEADERS_PATH)) << env.err;
  EXPECT_TRUE(contains(env.err, "other vd plugin headers")) << env.err;
}

TEST(PluginTest, VdimgHelpMentionsPlugins) {
  auto r = vdtest::vdimg({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(contains(r.out, "--plugin PATH")) << r.out;
  EXPECT_TRUE(contains(r.out, "VD_PLUGIN_PATH")) << r.out;
}

}  // namespace
