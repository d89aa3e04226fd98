// Encrypted images opened as qemu-img opens them: --object secret plus a json: pseudo-filename
// or --image-opts naming the secret (encrypt.key-secret for QCOW2, key-secret for LUKS), on
// every command that has --object. Differential: the same command line through qemu-img 7.2
// and vdimg gives the same output, errors (tool name aside) and exit code.
#include <gtest/gtest.h>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

const char kSecret[] = "secret,id=sec0,data=pw";

// The three kinds of encrypted image, each with 64 KiB of data at 0.
struct Kind {
  const char* name;
  const char* format;
  const char* create_opts;
  const char* key;  // the key-secret option of the format
};
const Kind kKinds[] = {
    {"qcow2-luks", "qcow2", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=1", "encrypt.key-secret"},
    {"qcow2-aes", "qcow2", "encrypt.format=aes,encrypt.key-secret=sec0,compat=0.10", "encrypt.key-secret"},
    {"luks", "luks", "key-secret=sec0,iter-time=1", "key-secret"},
};

void make(const Kind& k, const std::string& path, const std::string& backing = "") {
  std::vector<std::string> argv = {"qemu-img", "create", "-q", "-f", k.format, "--object", kSecret, "-o", k.create_opts};
  if (!backing.empty()) argv.insert(argv.end(), {"-b", backing, "-F", k.format});
  argv.insert(argv.end(), {path, "4M"});
  CmdResult r = vdtest::run(argv);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = vdtest::run({"qemu-io", "--object", kSecret, "--image-opts", "-c", "write -P 7 0 64k",
                   std::string("driver=") + k.format + ",file.filename=" + path + "," + k.key + "=sec0" +
                       (backing.empty() ? "" : ",backing." + std::string(k.key) + "=sec0")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

std::string image_opts(const Kind& k, const std::string& path, const std::string& secret = "sec0") {
  return std::string("driver=") + k.format + ",file.filename=" + path + "," + k.key + "=" + secret;
}

std::string json_name(const Kind& k, const std::string& path) {
  return std::string("json:{\"driver\":\"") + k.format + "\",\"file\":{\"driver\":\"file\",\"filename\":\"" + path +
         "\"},\"" + k.key + "\":\"sec0\"}";
}

CmdResult tool(const std::string& which, std::vector<std::string> args) {
  if (which == "vdimg") return vdtest::vdimg(std::move(args));
  args.insert(args.begin(), "qemu-img");
  return vdtest::run(args);
}

// Runs `args` through both tools (each on its own copy of the images `copies` names when the
// command writes) and expects the same results.
void same(const std::vector<std::string>& args) {
  CmdResult q = tool("qemu-img", args), v = tool("vdimg", args);
  std::string line;
  for (const auto& a : args) line += a + " ";
  EXPECT_EQ(v.exit_code, q.exit_code) << line << "\nqemu: " << q.err << "\nvdimg: " << v.err;
  EXPECT_EQ(v.out, q.out) << line;
  EXPECT_EQ(vdtest::without_tool_prefix(v.err), vdtest::without_tool_prefix(q.err)) << line;
}

TEST(ImageOpts, ReadOnlyCommandsMatchQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  for (const Kind& k : kKinds) {
    SCOPED_TRACE(k.name);
    const std::string img = dir.file(std::string(k.name) + ".img");
    make(k, img);
    const std::string opts = image_opts(k, img), json = json_name(k, img);
    for (std::string cmd : {"check", "map", "info"}) {
      same({cmd, "--object", kSecret, json});
      same({cmd, "--object", kSecret, "--image-opts", opts});
      same({cmd, "--object", kSecret, "--output=json", "--image-opts", opts});
    }
    same({"compare", "--object", kSecret, "--image-opts", opts, opts});
    same({"compare", "--object", kSecret, json, json});
    same({"measure", "-O", "qcow2", "--object", kSecret, json});
    same({"measure", "-O", "raw", "--object", kSecret, "--image-opts", opts});
    if (std::string(k.format) == "qcow2") same({"snapshot", "-l", "--object", kSecret, json});
    // Wrong keys and names, in qemu's words.
    same({"map", "--object", "secret,id=sec0,data=bad", "--image-opts", opts});
    same({"check", "--image-opts", image_opts(k, img, "nope")});
    same({"map", "--image-opts", opts + ",foo=1"});
    same({"map", "--object", kSecret, "--image-opts", opts + ",foo=1"});
    same({"info", "--object", kSecret, "-f", k.format, "--image-opts", opts});
  }
}

TEST(ImageOpts, JsonNamesAndOptionErrorsMatchQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string img = dir.file("p.qcow2");
  ASSERT_EQ(vdtest::run({"qemu-img", "create", "-q", "-f", "qcow2", img, "1M"}).exit_code, 0);
  for (const std::string& name : std::vector<std::string>
       {"json:{\"driver\":\"qcow2\",\"file.filename\":\"" + img + "\"}", "json:{\"file.filename\":\"" + img + "\"}",
        "json:{\"driver\":\"qcow2\",\"file\":{\"filename\":\"" + img + "\"}}",
        "json:{\"driver\":\"qcow2\",\"file.filename\":\"" + img + "\"", "json:{bad}", "json:[1]", "json:",
        "json:{\"driver\":\"qcow2\"}", "json:{\"driver\":\"qcow2\",\"file\":\"" + img + "\"}",
        "json:{\"driver\":\"qcow2\",\"file.filename\":\"" + img + "\",\"file.foo\":1}",
        "json:{\"driver\":\"qcow2\",\"file.filename\":\"" + img + "\",\"file.driver\":\"bogus\"}",
        "json:{\"driver\":\"qcow2\",\"file.filename\":\"" + dir.file("none") + "\"}"}) {
    same({"info", name});
    same({"check", name});
  }
  same({"info", "--image-opts", "driver=qcow2,file.filename=" + img});
  // Secret objects: base64, and qemu's words for what is wrong in one.
  const std::string opts = "driver=qcow2,file.filename=" + img + ",encrypt.key-secret=s";
  for (const std::string obj : {"secret,id=s,data=cHc=,format=base64", "secret,id=s,data=@@,format=base64",
                                "secret,id=s,data=x,format=hex", "secret,id=s,data=x,keyid=k", "bogus,id=s",
                                "secret,data=x", "secret,id=s"})
    same({"check", "--object", obj, "--image-opts", opts});
  same({"map", "--image-opts", "driver=qcow2,file.filename=" + img + ",bogus=on"});
  // Node options vd honours: no backing file (with qemu's warning for ""), cache.no-flush,
  // file.locking; bad booleans in qemu's words.
  same({"map", "--image-opts", "driver=qcow2,file.filename=" + img + ",backing="});
  same({"map", "json:{\"driver\":\"qcow2\",\"file.filename\":\"" + img + "\",\"backing\":null}"});
  same({"map", "--image-opts", "driver=qcow2,file.filename=" + img + ",cache.no-flush=on,file.locking=off"});
  same({"map", "--image-opts", "driver=qcow2,file.filename=" + img + ",cache.direct=maybe"});
  same({"info", "--image-opts", "driver=raw,file.filename=" + img + ",key-secret=x"});
  same({"info", "--image-opts", "driver=qcow2,file.filename=" + img + ",key-secret=x"});
}

// Commands that write, each tool on its own copy.
TEST(ImageOpts, WritingCommandsMatchQemuImg) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  for (const Kind& k : kKinds) {
    SCOPED_TRACE(k.name);
    for (std::string t : {"qemu-img", "vdimg"}) {
      const std::string img = dir.file(t + k.name + ".img");
      make(k, img);
      const std::string opts = image_opts(k, img);
      CmdResult r = tool(t, {"resize", "--object", kSecret, "--image-opts", opts, "6M"});
      EXPECT_EQ(r.exit_code, 0) << t << r.err;
      EXPECT_EQ(r.out, "Image resized.\n");
      r = tool(t, {"dd", "--object", kSecret, "--image-opts", "if=" + opts, "of=" + img + ".raw", "bs=64k", "count=2"});
      EXPECT_EQ(r.exit_code, 0) << t << r.err;
      r = tool(t, {"bench", "-c", "10", "--object", kSecret, "--image-opts", opts});
      if (t == "vdimg") {  // qemu-img 7.2's bench has no --object
        EXPECT_EQ(r.exit_code, 0) << r.err;
      }
      if (std::string(k.name) == "qcow2-luks") {  // v3: bitmaps
        r = tool(t, {"snapshot", "-c", "s1", "--object", kSecret, json_name(k, img)});
        EXPECT_EQ(r.exit_code, 0) << t << r.err;
        r = tool(t, {"bitmap", "--add", "--object", kSecret, "--image-opts", opts, "bm0"});
        EXPECT_EQ(r.exit_code, 0) << t << r.err;
      }
    }
    const std::string q = dir.file(std::string("qemu-img") + k.name + ".img");
    const std::string v = dir.file(std::string("vdimg") + k.name + ".img");
    same({"compare", "--object", kSecret, "--image-opts", image_opts(k, q), image_opts(k, v)});
    same({"compare", "-f", "raw", "-F", "raw", q + ".raw", v + ".raw"});
    EXPECT_EQ(vdtest::file_size(v + ".raw"), 128u << 10);
    same({"info", "--object", kSecret, "--image-opts", image_opts(k, v)});  // size, snapshots, bitmaps
    if (std::string(k.format) == "qcow2") {
      CmdResult chk = vdtest::run({"qemu-img", "check", "--object", kSecret, "--image-opts", image_opts(k, v)});
      EXPECT_EQ(chk.exit_code, 0) << chk.out << chk.err;
    }
  }
}

// A chain of encrypted QCOW2 images with one key: the backing image's key named by
// backing.encrypt.key-secret; commit and rebase write through them.
TEST(ImageOpts, EncryptedChainsCommitAndRebase) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  for (const Kind* kind : {&kKinds[0], &kKinds[1]}) {  // qcow2 with luks, qcow2 v2 with aes
    const Kind& k = *kind;
    SCOPED_TRACE(k.name);
    const std::string name = k.name;
    std::string maps[2];
    for (int i = 0; i < 2; ++i) {
      const std::string t = i ? "vdimg" : "qemu-img";
      const std::string base = dir.file(t + name + "-base"), top = dir.file(t + name + "-top");
      make(k, base);
      make(k, top, base);
      const std::string chain = image_opts(k, top) + ",backing.encrypt.key-secret=sec0";
      ASSERT_EQ(vdtest::run({"qemu-io", "--object", kSecret, "--image-opts", "-c", "write -P 9 64k 64k", chain}).exit_code,
                0);
      CmdResult r = tool(t, {"map", "--object", kSecret, "--output=json", "--image-opts", chain});
      EXPECT_EQ(r.exit_code, 0) << t << r.err;
      maps[i] = r.out;
      r = tool(t, {"commit", "--object", kSecret, "--image-opts", chain});
      EXPECT_EQ(r.exit_code, 0) << t << r.err;
      EXPECT_EQ(r.out, "Image committed.\n");
      r = tool(t, {"rebase", "--object", kSecret, "-b", "", "--image-opts", chain});
      EXPECT_EQ(r.exit_code, 0) << t << r.err;
    }
    EXPECT_EQ(maps[1], maps[0]);
    for (const char* which : {"-base", "-top"})
      same({"compare", "--object", kSecret, "--image-opts", image_opts(k, dir.file("qemu-img" + name + which)),
            image_opts(k, dir.file("vdimg" + name + which))});
    // info opens the image alone: a backing option is left unused and refused, as by qemu-img.
    same({"info", "--object", kSecret, "--image-opts",
          image_opts(k, dir.file("qemu-img" + name + "-top")) + ",backing.encrypt.key-secret=sec0"});
  }
}

// convert: an encrypted SRC by --image-opts, an existing encrypted DST by
// --target-image-opts (with -n) or a json: name.
TEST(ImageOpts, ConvertSourceAndTargetOptions) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const Kind& k = kKinds[0];
  const std::string src = dir.file("src.img");
  make(k, src);
  for (std::string t : {"qemu-img", "vdimg"}) {
    const std::string dst = dir.file(t + ".dst"), raw = dir.file(t + ".raw");
    make(k, dst);
    CmdResult r = tool(t, {"convert", "--object", kSecret, "--image-opts", image_opts(k, src), raw});
    EXPECT_EQ(r.exit_code, 0) << t << r.err;
    r = tool(t, {"convert", "-n", "-p", "--object", kSecret, "--target-image-opts", raw, image_opts(k, dst)});
    EXPECT_EQ(r.exit_code, 0) << t << r.err;
    EXPECT_EQ(r.out, "    (0.00/100%)\r    (100.00/100%)\r    (100.00/100%)\r\n") << t;
    r = tool(t, {"convert", "-n", "-O", "qcow2", "--object", kSecret, raw, json_name(k, dst)});
    EXPECT_EQ(r.exit_code, 0) << t << r.err;
    r = vdtest::run({"qemu-img", "compare", "--object", kSecret, raw, json_name(k, dst)});
    EXPECT_EQ(r.exit_code, 0) << t << r.out << r.err;
  }
  const std::string dst = dir.file("vdimg.dst");
  same({"convert", "--object", kSecret, "--target-image-opts", src, image_opts(k, dst)});
  same({"convert", "-n", "-O", "qcow2", "--target-image-opts", src, image_opts(k, dst)});
  same({"convert", "-n", "--object", kSecret, dir.file("vdimg.raw"), json_name(k, dst)});  // -O raw wins
}

TEST(ImageOpts, DifferentKeysInOneChainAreRefusedClearly) {
  VD_REQUIRE_QEMU();
  TempDir dir;
  const std::string base = dir.file("b.qcow2"), top = dir.file("t.qcow2");
  make(kKinds[0], base);
  ASSERT_EQ(vdtest::run({"qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top}).exit_code, 0);
  CmdResult r = vdtest::vdimg({"map", "--object", kSecret, "--object", "secret,id=other,data=x", "--image-opts",
                               "driver=qcow2,file.filename=" + top +
                                   ",encrypt.key-secret=other,backing.encrypt.key-secret=sec0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("one key"), std::string::npos) << r.err;
  // A backing file's key missing or wrong, in qemu's words.
  same({"compare", top, base});
  same({"map", "--object", "secret,id=sec0,data=bad", "--image-opts",
        "driver=qcow2,file.filename=" + top + ",backing.encrypt.key-secret=sec0"});
  // Only the backing image's key: the chain opens with it.
  r = vdtest::vdimg({"compare", "--object", kSecret, "--image-opts",
                     "driver=qcow2,file.filename=" + top + ",backing.encrypt.key-secret=sec0",
                     image_opts(kKinds[0], base)});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

}  // namespace
