// Persistent dirty bitmaps against qemu: images made by `qemu-img bitmap`, the same workload
// through qemu-io and `vdimg io` (one, two and disabled bitmaps, several granularities), then
// qemu-img info equal, the bits equal (read through qemu-nbd -B and nbdinfo --map), qemu-img
// check clean. `vdimg bitmap` runs qemu-img bitmap's operation sequences with the same
// outcome. Hand-corrupted directories are refused as qemu refuses them.
#include <gtest/gtest.h>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

CmdResult vdimg(std::vector<std::string> args) {
  args.insert(args.begin(), vdtest::vdimg_path());
  return vdtest::run(args);
}

bool have_nbd() { return vdtest::run({"sh", "-c", "command -v nbdinfo && command -v qemu-nbd"}).exit_code == 0; }

// The bitmap as qemu sees it: nbdinfo's map of qemu:dirty-bitmap:NAME served by qemu-nbd.
std::string bitmap_map(const std::string& image, const std::string& name) {
  auto r = vdtest::run({"nbdinfo", "--map=qemu:dirty-bitmap:" + name, "--", "[", "qemu-nbd", "-r", "-f", "qcow2",
                        "-B", name, image, "]"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

// qemu-img info without the lines that name the file or its allocated size.
std::string info_body(const std::string& image) {
  auto r = vdtest::run({"qemu-img", "info", "--output=json", image});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::string out;
  size_t pos = 0;
  while (pos < r.out.size()) {
    size_t nl = r.out.find('\n', pos);
    std::string line = r.out.substr(pos, nl - pos);
    if (line.find("\"filename\"") == std::string::npos && line.find("\"actual-size\"") == std::string::npos)
      out += line + "\n";
    pos = nl == std::string::npos ? r.out.size() : nl + 1;
  }
  return out;
}

void expect_check_clean(const std::string& image) {
  auto q = vdtest::run({"qemu-img", "check", image});
  EXPECT_EQ(q.exit_code, 0) << q.out << q.err;
  auto v = vdimg({"check", image});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
}

struct BitmapSetup {
  const char* name;
  const char* create;   // qemu-img create options
  const char* bitmaps;  // qemu-img bitmap commands, ';'-separated, IMG for the image
};

const BitmapSetup kSetups[] = {
    {"one", "", "qemu-img bitmap --add IMG b0"},
    {"two_grans", "", "qemu-img bitmap --add -g 512 IMG b0; qemu-img bitmap --add -g 1M IMG b1"},
    {"disabled", "", "qemu-img bitmap --add IMG on; qemu-img bitmap --add --disable -g 4k IMG off"},
    {"small_clusters", "-o cluster_size=512",
     "qemu-img bitmap --add -g 512 IMG b0; qemu-img bitmap --add -g 64k IMG b1"},
};

const char* kWorkload[] = {"write -P 1 0 64k", "write 100k 1000", "write -z 1M 70k", "discard 2M 64k",
                           "write 3M 1",      "write -P 2 8M 4k", "write -z -u 4M 128k", "flush", "write 5M 4k"};

void prepare(const TempDir& dir, const BitmapSetup& s, const std::string& name) {
  const std::string img = dir.file(name);
  std::string cmds = s.bitmaps;
  for (size_t at; (at = cmds.find("IMG")) != std::string::npos;) cmds.replace(at, 3, img);
  vdtest::sh(std::string("qemu-img create -q -f qcow2 ") + s.create + " " + img + " 12M && " + cmds);
}

TEST(VdimgBitmap, WorkloadMatchesQemuIo) {
  VD_REQUIRE_QEMU();
  if (!have_nbd()) GTEST_SKIP() << "no nbdinfo/qemu-nbd";
  for (const BitmapSetup& s : kSetups) {
    SCOPED_TRACE(s.name);
    TempDir dir;
    prepare(dir, s, "q.qcow2");
    prepare(dir, s, "v.qcow2");
    std::vector<std::string> q{"qemu-io"}, v{"io"};
    for (const char* c : kWorkload) {
      q.insert(q.end(), {"-c", c});
      v.insert(v.end(), {"-c", c});
    }
    q.push_back(dir.file("q.qcow2"));
    v.push_back(dir.file("v.qcow2"));
    ASSERT_EQ(vdtest::run(q).exit_code, 0);
    auto r = vdimg(v);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(info_body(dir.file("v.qcow2")), info_body(dir.file("q.qcow2")));
    for (const char* b : {"b0", "b1", "on", "off"}) {
      if (info_body(dir.file("q.qcow2")).find(std::string("\"") + b + "\"") == std::string::npos) continue;
      EXPECT_EQ(bitmap_map(dir.file("v.qcow2"), b), bitmap_map(dir.file("q.qcow2"), b)) << b;
    }
    expect_check_clean(dir.file("v.qcow2"));
    // A second session keeps what the first stored and adds to it.
    ASSERT_EQ(vdimg({"io", "-c", "write 6M 4k", dir.file("v.qcow2")}).exit_code, 0);
    ASSERT_EQ(vdtest::run({"qemu-io", "-c", "write 6M 4k", dir.file("q.qcow2")}).exit_code, 0);
    EXPECT_EQ(info_body(dir.file("v.qcow2")), info_body(dir.file("q.qcow2")));
    for (const char* b : {"b0", "on"}) {
      if (info_body(dir.file("q.qcow2")).find(std::string("\"") + b + "\"") == std::string::npos) continue;
      EXPECT_EQ(bitmap_map(dir.file("v.qcow2"), b), bitmap_map(dir.file("q.qcow2"), b)) << b;
    }
    expect_check_clean(dir.file("v.qcow2"));
  }
}

TEST(VdimgBitmap, InfoMatchesQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  prepare(dir, kSetups[2], "a.qcow2");
  for (std::vector<std::string> extra : {std::vector<std::string>{}, {"--output=json"}}) {
    std::vector<std::string> ours{"info"}, theirs{"qemu-img", "info"};
    ours.insert(ours.end(), extra.begin(), extra.end());
    theirs.insert(theirs.end(), extra.begin(), extra.end());
    ours.push_back(dir.file("a.qcow2"));
    theirs.push_back(dir.file("a.qcow2"));
    auto a = vdimg(ours);
    ASSERT_EQ(a.exit_code, 0) << a.err;
    EXPECT_EQ(a.out, vdtest::run(theirs).out);
  }
}

// Each line: arguments with IMG for the image; both tools run it on their own copy.
TEST(VdimgBitmap, OperationsMatchQemuImgBitmap) {
  VD_REQUIRE_QEMU();
  if (!have_nbd()) GTEST_SKIP() << "no nbdinfo/qemu-nbd";
  TempDir dir;
  prepare(dir, kSetups[2], "q.qcow2");
  vdtest::sh("qemu-io -c 'write 0 64k' -c 'write 1M 4k' " + dir.file("q.qcow2") + " >/dev/null && cp " +
             dir.file("q.qcow2") + " " + dir.file("v.qcow2") + " && cp " + dir.file("q.qcow2") + " " +
             dir.file("src.qcow2"));
  const std::vector<std::string> cases = {
      "IMG", "--add IMG", "-g 64k --remove IMG on", "-b x --add IMG on", "-F qcow2 --merge on IMG b9",
      "--add -g 3x IMG z", "--add -g 4G IMG z", "--add -g 0 IMG z", "--add -g 1k IMG z",
      "--add --remove IMG nn", "--add --add IMG n2", "--disable --add IMG n3", "--add -g 256 IMG z5",
      "--add --disable -g 512 IMG n4", "--merge on IMG n4", "--clear IMG on", "--remove IMG off",
      "--merge nope IMG n2", "--merge on -b SRC -F qcow2 IMG n2", "--clear IMG n2 extra", "--enable IMG n4",
  };
  for (const std::string& c : cases) {
    SCOPED_TRACE(c);
    auto args_for = [&](const std::string& img) {
      std::vector<std::string> out;
      size_t pos = 0;
      while (pos <= c.size()) {
        size_t sp = c.find(' ', pos);
        std::string w = c.substr(pos, sp == std::string::npos ? std::string::npos : sp - pos);
        if (w == "IMG") w = img;
        if (w == "SRC") w = dir.file("src.qcow2");
        out.push_back(w);
        if (sp == std::string::npos) break;
        pos = sp + 1;
      }
      return out;
    };
    auto qa = args_for(dir.file("q.qcow2"));
    qa.insert(qa.begin(), {"qemu-img", "bitmap"});
    auto va = args_for(dir.file("v.qcow2"));
    va.insert(va.begin(), "bitmap");
    auto q = vdtest::run(qa);
    auto v = vdimg(va);
    EXPECT_EQ(v.exit_code, q.exit_code) << v.err;
    std::string qe = q.err, ve = v.err;
    for (auto* s : {&qe, &ve})
      for (const char* tool : {"qemu-img: ", "vdimg: "})
        for (size_t at; (at = s->find(tool)) != std::string::npos;) s->erase(at, std::string(tool).size());
    EXPECT_EQ(ve, qe);
  }
  EXPECT_EQ(info_body(dir.file("v.qcow2")), info_body(dir.file("q.qcow2")));
  for (const char* b : {"on", "n2", "n4", "z"})
    EXPECT_EQ(bitmap_map(dir.file("v.qcow2"), b), bitmap_map(dir.file("q.qcow2"), b)) << b;
  expect_check_clean(dir.file("v.qcow2"));
}

// A bitmap left in use (its writer crashed) is inconsistent: shown in-use, never loaded,
// kept as it is by a write session, refused by the operations that need its bits.
TEST(VdimgBitmap, InUseIsInconsistent) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  prepare(dir, kSetups[0], "a.qcow2");
  const std::string img = dir.file("a.qcow2");
  ASSERT_EQ(vdimg({"io", "-c", "write 0 4k", img}).exit_code, 0);
  // The directory is at the offset the extension names; flags are at +12 of the entry.
  
  uint64_t ext = 0;
  for (uint64_t at = 112; at + 8 < 4096;) {
    uint32_t type = vdtest::peek_be32(img, at), len = vdtest::peek_be32(img, at + 4);
    if (type == 0x23852875) {
      ext = at + 8;
      break;
    }
    if (type == 0) break;
    at += 8 + (len + 7) / 8 * 8;
  }
  ASSERT_NE(ext, 0u);
  const uint64_t dir_off = vdtest::peek_be64(img, ext + 16);
  vdtest::poke_be32(img, dir_off + 12, 3);  // in_use | auto
  auto v = vdimg({"info", img});
  EXPECT_EQ(v.out, vdtest::run({"qemu-img", "info", img}).out);
  EXPECT_NE(v.out.find("[0]: in-use"), std::string::npos) << v.out;
  ASSERT_EQ(vdimg({"io", "-c", "write 1M 4k", img}).exit_code, 0);
  EXPECT_NE(vdimg({"info", img}).out.find("[0]: in-use"), std::string::npos);
  auto clear = vdimg({"bitmap", "--clear", img, "b0"});
  EXPECT_EQ(clear.exit_code, 1);
  EXPECT_NE(clear.err.find("Operation clear on bitmap b0 failed: Bitmap 'b0' is inconsistent"), std::string::npos)
      << clear.err;
  EXPECT_EQ(vdtest::run({"qemu-img", "check", img}).exit_code, 0);
  ASSERT_EQ(vdimg({"bitmap", "--remove", img, "b0"}).exit_code, 0);
  EXPECT_EQ(vdimg({"info", img}).out.find("bitmaps"), std::string::npos);
  expect_check_clean(img);
}

// Hand-corrupted directories and tables: both tools refuse the same ones with the same words.
TEST(VdimgBitmap, CorruptDirectoriesRefusedAsQemu) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  prepare(dir, kSetups[2], "base.qcow2");
  vdtest::sh("qemu-io -c 'write 0 64k' " + dir.file("base.qcow2") + " >/dev/null");
  const std::string base = dir.file("base.qcow2");
  uint64_t ext = 0;
  for (uint64_t at = 112; at + 8 < 4096;) {
    uint32_t type = vdtest::peek_be32(base, at), len = vdtest::peek_be32(base, at + 4);
    if (type == 0x23852875) {
      ext = at;
      break;
    }
    if (type == 0) break;
    at += 8 + (len + 7) / 8 * 8;
  }
  ASSERT_NE(ext, 0u);
  const uint64_t d = vdtest::peek_be64(base, ext + 24);
  const uint64_t table = vdtest::peek_be64(base, d);
  struct Poke {
    const char* what;
    uint64_t at;
    int width;  // bytes
    uint64_t value;
    const char* qemu_says;  // nullptr: both accept
    uint64_t at2 = 0;       // a second poke, when width2 is set
    int width2 = 0;
    uint64_t value2 = 0;
  };
  const Poke pokes[] = {
      {"reserved flag", d + 12, 4, 6, "Bitmap 'on' doesn't satisfy the constraints"},
      {"type", d + 16, 1, 2, "Bitmap 'on' doesn't satisfy the constraints"},
      {"granularity 8", d + 17, 1, 8, "Bitmap 'on' doesn't satisfy the constraints"},
      {"granularity 32", d + 17, 1, 32, "Bitmap 'on' doesn't satisfy the constraints"},
      {"granularity 31", d + 17, 1, 31, nullptr},
      {"table size 0", d + 8, 4, 0, "Bitmap 'on' doesn't satisfy the constraints"},
      {"table size 2", d + 8, 4, 2, "Could not read bitmap 'on' from image: Invalid argument"},
      {"table unaligned", d, 8, table + 1, "Bitmap 'on' doesn't satisfy the constraints"},
      {"table at 0", d, 8, 0, "Bitmap 'on' doesn't satisfy the constraints"},
      {"entry reserved bit", table, 8, 0x10002, "Could not read bitmap_table table from image for bitmap 'on'"},
      {"entry offset and all-ones", table, 8, 0x10001, "Could not read bitmap_table table from image for bitmap 'on'"},
      {"entry unaligned", table, 8, 0x10200, "Could not read bitmap_table table from image for bitmap 'on'"},
      {"entry all ones", table, 8, 1, nullptr},
      {"extra data", d + 20, 4, 8, "Bitmap extra data is not supported"},
      {"duplicate name", d + 24 + 1, 1, 'f', "Bitmap already exists: of", d + 32 + 18, 2, 2},
      {"nb_bitmaps 1", ext + 8, 4, 1, "More bitmaps found than specified in header extension"},
      {"nb_bitmaps 3", ext + 8, 4, 3, "Less bitmaps found than specified in header extension"},
      {"directory size short", ext + 16, 8, 40, "Broken bitmap directory"},
      {"directory size long", ext + 16, 8, 72, "Broken bitmap directory"},
      {"directory unaligned", ext + 24, 8, d + 1, "bitmaps_ext: invalid bitmap directory offset"},
      {"extension length", ext + 4, 4, 1, "bitmaps_ext: Invalid extension length"},
  };
  for (const Poke& p : pokes) {
    SCOPED_TRACE(p.what);
    const std::string img = dir.file("c.qcow2");
    vdtest::sh("cp " + base + " " + img);
    if (p.width == 1) vdtest::poke_u8(img, p.at, static_cast<uint8_t>(p.value));
    if (p.width == 4) vdtest::poke_be32(img, p.at, static_cast<uint32_t>(p.value));
    if (p.width == 8) vdtest::poke_be64(img, p.at, p.value);
    if (p.width2 == 2) vdtest::poke_be16(img, p.at2, static_cast<uint16_t>(p.value2));
    auto q = vdtest::run({"qemu-img", "info", img});
    auto v = vdimg({"info", img});
    auto w = vdimg({"io", "-c", "write 0 4k", img});
    if (!p.qemu_says) {
      EXPECT_EQ(q.exit_code, 0) << q.err;
      EXPECT_EQ(v.exit_code, 0) << v.err;
      EXPECT_EQ(v.out, q.out);
      EXPECT_EQ(w.exit_code, 0) << w.err;
      // (the all-ones poke leaks the data cluster the entry pointed at: both checks say so)
      EXPECT_EQ(vdimg({"check", img}).exit_code, vdtest::run({"qemu-img", "check", img}).exit_code);
      continue;
    }
    EXPECT_NE(q.exit_code, 0);
    EXPECT_NE(q.err.find(p.qemu_says), std::string::npos) << q.err;
    EXPECT_NE(v.exit_code, 0);
    EXPECT_NE(v.err.find(p.qemu_says), std::string::npos) << v.err;
    EXPECT_NE(w.exit_code, 0);
    EXPECT_NE(w.err.find(p.qemu_says), std::string::npos) << w.err;
  }
}

// commit writes into the base through its image: the base's enabled bitmaps mark what the
// commit changed, as qemu-img commit's do. snapshot -c keeps bitmaps; -a is refused while
// the image has any, as by qemu-img.
TEST(VdimgBitmap, CommitAndSnapshotAsQemuImg) {
  VD_REQUIRE_QEMU();
  if (!have_nbd()) GTEST_SKIP() << "no nbdinfo/qemu-nbd";
  TempDir dir;
  for (const char* p : {"q", "v"}) {
    const std::string base = dir.file(std::string(p) + "base.qcow2"), top = dir.file(std::string(p) + "top.qcow2");
    vdtest::sh("qemu-img create -q -f qcow2 " + base + " 4M && qemu-img bitmap --add " + base + " b0 && " +
               "qemu-img create -q -f qcow2 -b " + base + " -F qcow2 " + top + " && " +
               "qemu-io -c 'write 1M 64k' -c 'write 3M 4k' " + top + " >/dev/null");
  }
  ASSERT_EQ(vdtest::run({"qemu-img", "commit", "-q", dir.file("qtop.qcow2")}).exit_code, 0);
  auto c = vdimg({"commit", "-q", dir.file("vtop.qcow2")});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(bitmap_map(dir.file("vbase.qcow2"), "b0"), bitmap_map(dir.file("qbase.qcow2"), "b0"));
  expect_check_clean(dir.file("vbase.qcow2"));

  ASSERT_EQ(vdtest::run({"qemu-img", "snapshot", "-c", "s", dir.file("qbase.qcow2")}).exit_code, 0);
  ASSERT_EQ(vdimg({"snapshot", "-c", "s", dir.file("vbase.qcow2")}).exit_code, 0);
  EXPECT_EQ(bitmap_map(dir.file("vbase.qcow2"), "b0"), bitmap_map(dir.file("qbase.qcow2"), "b0"));
  expect_check_clean(dir.file("vbase.qcow2"));
  auto q = vdtest::run({"qemu-img", "snapshot", "-a", "s", dir.file("qbase.qcow2")});
  auto v = vdimg({"snapshot", "-a", "s", dir.file("vbase.qcow2")});
  EXPECT_EQ(v.exit_code, q.exit_code);
  EXPECT_NE(v.err.find("Could not apply snapshot 's': Device has active dirty bitmaps"), std::string::npos) << v.err;
}

// convert --bitmaps copies every bitmap (name, granularity, enabled flag, bits) as qemu-img
// does, and refuses targets without bitmaps with its words.
TEST(VdimgBitmap, ConvertCopiesBitmapsAsQemuImg) {
  VD_REQUIRE_QEMU();
  if (!have_nbd()) GTEST_SKIP() << "no nbdinfo/qemu-nbd";
  TempDir dir;
  const std::string src = dir.file("src.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + src + " 4M && qemu-img bitmap --add " + src + " b0 && " +
             "qemu-img bitmap --add -g 512 --disable " + src + " b1 && qemu-io -c 'write 0 64k' -c 'write 2M 3k' " +
             src + " >/dev/null && qemu-img bitmap --disable " + src + " b0 && qemu-img bitmap --enable " + src +
             " b1 && qemu-io -c 'write 3M 1k' " + src + " >/dev/null");
  ASSERT_EQ(vdtest::run({"qemu-img", "convert", "--bitmaps", "-O", "qcow2", src, dir.file("q.qcow2")}).exit_code, 0);
  auto v = vdimg({"convert", "--bitmaps", "-O", "qcow2", src, dir.file("v.qcow2")});
  ASSERT_EQ(v.exit_code, 0) << v.err;
  EXPECT_EQ(info_body(dir.file("v.qcow2")), info_body(dir.file("q.qcow2")));
  for (const char* b : {"b0", "b1"})
    EXPECT_EQ(bitmap_map(dir.file("v.qcow2"), b), bitmap_map(dir.file("q.qcow2"), b)) << b;
  expect_check_clean(dir.file("v.qcow2"));
  auto raw = vdimg({"convert", "--bitmaps", "-O", "raw", src, dir.file("v.raw")});
  EXPECT_EQ(raw.exit_code, 1);
  EXPECT_NE(raw.err.find("Format driver 'raw' does not support bitmaps"), std::string::npos) << raw.err;
}

// The bitmap directory is in the overlap map (QEMU's QCOW2_OL_BITMAP_DIRECTORY): a data
// cluster entry pointing at it is refused, the image marked corrupt, the directory intact.
TEST(VdimgBitmap, WriteOverTheDirectoryIsRefused) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string img = dir.file("o.qcow2");
  vdtest::sh("qemu-img create -q -f qcow2 " + img + " 4M && qemu-io -c 'write -P 7 0 64k' " + img +
             " >/dev/null && qemu-img bitmap --add " + img + " b0");
  ASSERT_EQ(vdtest::peek_be64(img, 0x30000) & ~(1ull << 63), 0x40000u) << "unexpected layout";
  uint64_t ext = 0;
  for (uint64_t at = 112; at + 8 < 4096;) {
    uint32_t type = vdtest::peek_be32(img, at), len = vdtest::peek_be32(img, at + 4);
    if (type == 0x23852875) ext = at;
    if (type == 0x23852875 || type == 0) break;
    at += 8 + (len + 7) / 8 * 8;
  }
  ASSERT_NE(ext, 0u);
  const uint64_t d = vdtest::peek_be64(img, ext + 24);
  vdtest::poke_be64(img, 0x40000, d | (1ull << 63));
  const auto before = vdtest::read_file(img);
  auto r = vdimg({"io", "-c", "write -P 1 0 4k", img});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("overlaps with bitmap directory"), std::string::npos) << r.err;
  EXPECT_NE(vdtest::run({"qemu-img", "info", img}).out.find("corrupt: true"), std::string::npos);
  // The directory stays where it was, whole; the bitmap in use (it could not be stored on a
  // corrupt image), as QEMU leaves it.
  const auto after = vdtest::read_file(img);
  EXPECT_TRUE(std::equal(before.begin() + d, before.begin() + d + 12, after.begin() + d));
  EXPECT_TRUE(std::equal(before.begin() + d + 16, before.begin() + d + 32, after.begin() + d + 16));
  EXPECT_EQ(vdtest::peek_be32(img, d + 12), 3u);
  EXPECT_EQ(vdtest::peek_be64(img, ext + 24), d);
}

}  // namespace
