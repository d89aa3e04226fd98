// Registry: explicit list, fixed probe order, raw always last, names unique.
#include <gtest/gtest.h>

#include "support/fake_backend.h"
#include "support/support.h"
#include "vd/registry.h"
#include "vd/runtime.h"

namespace {

// A backend that only has a name and a fixed probe answer.
class StubBackend final : public vd::Backend {
 public:
  StubBackend(std::string name, bool matches) : name_(std::move(name)), matches_(matches) {}
  std::string_view name() const override { return name_; }
  unsigned capabilities() const override { return 0; }
  std::vector<std::string_view> extensions() const override { return {}; }
  std::vector<vd::OptionHelp> create_options() const override { return {}; }
  bool probe(vd::File&) const override { return matches_; }
  vd::Result<std::unique_ptr<vd::Image>> open(const std::string&, const vd::OpenOptions&,
                                              vd::IoProvider&) const override {
    return vd::Error(vd::Errc::not_supported, "stub");
  }
  vd::Result<std::unique_ptr<vd::Image>> create(const std::string&, const vd::CreateOptions&,
                                                vd::IoProvider&) const override {
    return vd::Error(vd::Errc::not_supported, "stub");
  }

 private:
  std::string name_;
  bool matches_;
};

std::vector<std::string> names(const vd::Registry& r) {
  std::vector<std::string> out;
  for (const auto* b : r.backends()) out.emplace_back(b->name());
  return out;
}

class RegistryTest : public ::testing::Test {
 protected:
  vd::Runtime rt{1};
  vd::MemIoProvider mem{rt.executor()};
};

TEST_F(RegistryTest, BuiltinListsRawLast) {
  vd::Registry r = vd::Registry::builtin();
  ASSERT_FALSE(r.backends().empty());
  EXPECT_EQ(r.backends().back()->name(), "raw");
}

TEST_F(RegistryTest, AddInsertsBeforeRaw) {
  vd::Registry r = vd::Registry::builtin();
  StubBackend a("alpha", false), b("beta", false);
  ASSERT_FALSE(r.add(&a));
  ASSERT_FALSE(r.add(&b));
  auto n = names(r);
  ASSERT_GE(n.size(), 3u);
  EXPECT_EQ(n.back(), "raw");
  EXPECT_EQ(n[n.size() - 3], "alpha");
  EXPECT_EQ(n[n.size() - 2], "beta");
}

TEST_F(RegistryTest, AddToEmptyRegistryKeepsOrder) {
  vd::Registry r;
  StubBackend a("alpha", false), b("beta", false);
  ASSERT_FALSE(r.add(&a));
  ASSERT_FALSE(r.add(&b));
  EXPECT_EQ(names(r), (std::vector<std::string>{"alpha", "beta"}));
}

TEST_F(RegistryTest, DuplicateNameIsRefused) {
  vd::Registry r = vd::Registry::builtin();
  StubBackend raw2("raw", true);
  vd::Error e = r.add(&raw2);
  ASSERT_TRUE(e);
  EXPECT_TRUE(e.is(vd::Errc::exists));
  EXPECT_NE(e.message().find("'raw'"), std::string::npos) << e.message();
  EXPECT_EQ(r.find("raw"), r.backends().back());
}

TEST_F(RegistryTest, NullBackendIsRefused) {
  vd::Registry r;
  EXPECT_TRUE(r.add(nullptr).is(vd::Errc::invalid_argument));
}

TEST_F(RegistryTest, FindReturnsBackendByName) {
  vd::Registry r = vd::Registry::builtin();
  ASSERT_FALSE(r.add(&vdtest::fake_backend()));
  EXPECT_EQ(r.find("fake"), &vdtest::fake_backend());
  ASSERT_NE(r.find("raw"), nullptr);
  EXPECT_EQ(r.find("raw")->name(), "raw");
  EXPECT_EQ(r.find("nosuch"), nullptr);
}

TEST_F(RegistryTest, ProbePicksFirstMatchInOrder) {
  vd::Registry r = vd::Registry::builtin();
  StubBackend no("no", false), first("first", true), second("second", true);
  ASSERT_FALSE(r.add(&no));
  ASSERT_FALSE(r.add(&first));
  ASSERT_FALSE(r.add(&second));
  mem.contents("/img")->assign(512, std::byte{0});
  auto got = r.probe("/img", mem);
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ(*got, &first);
}

TEST_F(RegistryTest, ProbeFallsBackToRaw) {
  vd::Registry r = vd::Registry::builtin();
  ASSERT_FALSE(r.add(&vdtest::fake_backend()));
  mem.contents("/plain")->assign(4096, std::byte{0x5a});
  auto got = r.probe("/plain", mem);
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ((*got)->name(), "raw");
}

TEST_F(RegistryTest, ProbeRecognisesFakeBeforeRaw) {
  vd::Registry r = vd::Registry::builtin();
  ASSERT_FALSE(r.add(&vdtest::fake_backend()));
  ASSERT_EQ(vdtest::create_fake(mem, "/a.fake", 1 << 20), "");
  auto got = r.probe("/a.fake", mem);
  ASSERT_TRUE(got) << got.error().message();
  EXPECT_EQ((*got)->name(), "fake");
}

TEST_F(RegistryTest, ProbeOfMissingFileNamesThePath) {
  vd::Registry r = vd::Registry::builtin();
  vdtest::TempDir dir;
  std::string path = dir.file("missing.img");
  auto got = r.probe(path, rt.files());
  ASSERT_FALSE(got);
  EXPECT_TRUE(got.error().is(vd::Errc::not_found)) << got.error().message();
  EXPECT_NE(got.error().message().find(path), std::string::npos) << got.error().message();
}

TEST_F(RegistryTest, ProbeWithNoMatchIsWrongFormat) {
  vd::Registry r;
  StubBackend no("no", false);
  ASSERT_FALSE(r.add(&no));
  mem.contents("/x")->assign(512, std::byte{1});
  auto got = r.probe("/x", mem);
  ASSERT_FALSE(got);
  EXPECT_TRUE(got.error().is(vd::Errc::wrong_format));
  EXPECT_NE(got.error().message().find("/x"), std::string::npos);
}

}  // namespace
