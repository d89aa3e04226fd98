// vdimg dd against qemu-img 7.2 dd: the same messages and exit codes, and outputs of the same
// format, virtual size, file size and content (`qemu-img compare`), `qemu-img check` clean.
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "support/support.h"

namespace {

using Argv = std::vector<std::string>;

std::string unprefixed(std::string err, const std::string& out_name) {
  for (const std::string& p : {std::string("qemu-img: "), std::string("vdimg: "), out_name}) {
    for (size_t at = 0; (at = err.find(p, at)) != std::string::npos;) err.erase(at, p.size());
  }
  return err;
}

std::string info_line(const std::string& path, const std::string& key) {
  auto r = vdtest::run({"qemu-img", "info", "--output=json", path});
  size_t at = r.out.find("\"" + key + "\"");
  return at == std::string::npos ? "" : r.out.substr(at, r.out.find('\n', at) - at);
}

// Runs `qemu-img dd` and `vdimg dd` in `dir` with the operands `args`, where "of=OUT" names
// each tool's own output, and compares the outcomes and the outputs.
void expect_same(const vdtest::TempDir& dir, const Argv& args) {
  std::string q = "cd " + dir.path() + " && rm -f q.out v.out && qemu-img dd";
  std::string v = "cd " + dir.path() + " && " + vdtest::vdimg_path() + " dd";
  std::string line;
  for (const auto& a : args) {
    line += " " + a;
    q += " '" + (a == "of=OUT" ? std::string("of=q.out") : a) + "'";
    v += " '" + (a == "of=OUT" ? std::string("of=v.out") : a) + "'";
  }
  auto theirs = vdtest::run({"sh", "-c", q});
  auto ours = vdtest::run({"sh", "-c", v});
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << line << "\nvdimg stderr: " << ours.err;
  EXPECT_EQ(ours.out, theirs.out) << line;
  EXPECT_EQ(unprefixed(ours.err, "v.out"), unprefixed(theirs.err, "q.out")) << line;
  const std::string qo = dir.file("q.out"), vo = dir.file("v.out");
  if (theirs.exit_code != 0 && !std::ifstream(qo)) return;
  for (const char* key : {"format", "virtual-size"}) EXPECT_EQ(info_line(vo, key), info_line(qo, key)) << line;
  EXPECT_EQ(vdtest::file_size(vo), vdtest::file_size(qo)) << line;
  EXPECT_EQ(vdtest::run({"qemu-img", "compare", "-q", qo, vo}).exit_code, 0) << line;
  // (A raw output may hold a qcow2 header copied from the input: not an image to check.)
  if (line.find("-O qcow2") != std::string::npos) {
    EXPECT_EQ(vdtest::run({"qemu-img", "check", "-q", vo}).exit_code, 0) << line;
  }
}

void make_images(const vdtest::TempDir& dir) {
  vdtest::sh("cd " + dir.path() + " && "
             "qemu-img create -q -f qcow2 base.qcow2 6M && "
             "qemu-io -c 'write -P 1 0 100k' -c 'write -z 1M 1M' -c 'write -P 7 5M 1' base.qcow2 >/dev/null && "
             "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 && "
             "qemu-io -c 'write -P 5 3M 64k' -c 'write -P 6 4095k 2k' top.qcow2 >/dev/null && "
             "qemu-img convert -O raw top.qcow2 flat.raw");
}

TEST(VdimgDd, CopiesMatchQemuImg) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  make_images(dir);
  const std::vector<Argv> cases = {
      {"if=top.qcow2", "of=OUT"},
      {"if=top.qcow2", "of=OUT", "-O", "qcow2"},
      {"if=top.qcow2", "of=OUT", "-O", "qcow", "bs=64k"},
      {"if=top.qcow2", "of=OUT", "bs=1M", "count=2", "skip=1", "-O", "qcow2"},
      {"if=top.qcow2", "of=OUT", "bs=1000", "count=3"},
      {"if=top.qcow2", "of=OUT", "bs=1000", "count=3", "-O", "qcow2"},
      {"if=top.qcow2", "of=OUT", "bs=4k", "skip=3", "count=7000"},
      {"if=top.qcow2", "of=OUT", "bs=1k", "count=1k", "skip=0x10"},
      {"if=top.qcow2", "of=OUT", "bs=1M", "count=0"},
      {"if=top.qcow2", "of=OUT", "bs=1M", "count=1", "count=2"},
      {"if=top.qcow2", "of=OUT", "bs=1M", "skip=6"},
      {"if=top.qcow2", "of=OUT", "bs=1M", "skip=7"},  // past the end: a message, exit 0
      {"if=top.qcow2", "of=OUT", "skip=99999999999999999"},
      {"-f", "raw", "if=top.qcow2", "of=OUT", "bs=64k", "count=1"},
      {"-U", "if=flat.raw", "of=OUT", "-O", "qcow2", "bs=3000"},
      {"if=flat.raw", "if=top.qcow2", "of=OUT", "count=1"},
  };
  for (const auto& c : cases) expect_same(dir, c);
}

TEST(VdimgDd, RefusalsMatchQemuImg) {
  VD_REQUIRE_QEMU();
  vdtest::TempDir dir;
  make_images(dir);
  const std::vector<Argv> cases = {
      {},
      {"if=top.qcow2"},
      {"of=OUT"},
      {"bs", "if=top.qcow2", "of=OUT"},
      {"foo=1", "if=top.qcow2", "of=OUT"},
      {"if=top.qcow2", "of=OUT", "extra"},
      {"bs=0", "if=top.qcow2", "of=OUT"},
      {"bs=3G", "if=top.qcow2", "of=OUT"},
      {"bs=1M=2", "if=top.qcow2", "of=OUT"},
      {"bs=99999999999999999999", "if=top.qcow2", "of=OUT"},
      {"count=-1", "if=top.qcow2", "of=OUT"},
      {"skip=x", "if=top.qcow2", "of=OUT"},
      {"if=top.qcow2", "of=OUT", "-O", "foo"},
      {"if=top.qcow2", "of=/nonexistent/out"},
  };
  for (const auto& c : cases) expect_same(dir, c);
}

}  // namespace
