// vdimg amend of LUKS key slots (luks images, and QCOW2's encrypt.* options), differential
// against qemu-img 7.2: keys added by one tool open in the other, erases, the refusals with
// qemu-img's messages and exit codes, --force, `qemu-img check` clean and `vdimg info`
// showing the slots as `qemu-img info` does. PBKDF2 stays cheap (iter-time=10).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "support/support.h"

namespace {

using vdtest::CmdResult;
using vdtest::TempDir;

// Three secrets: s0 opens the fixtures, s1 and s2 are keys to add, s9 is never defined.
const std::vector<std::string> kSecrets = {"--object", "secret,id=s0,data=pw0", "--object",
                                           "secret,id=s1,data=pw1", "--object", "secret,id=s2,data=pw2"};

std::string prefix(const std::string& fmt) { return fmt == "luks" ? "" : "encrypt."; }

std::string image_opts(const std::string& fmt, const std::string& path, const std::string& key) {
  return "driver=" + fmt + ",file.filename=" + path + "," + prefix(fmt) + "key-secret=" + key;
}

// "state=active,keyslot=1" -> "encrypt.state=active,encrypt.keyslot=1" for qcow2.
std::string prefixed(const std::string& fmt, const std::string& opts) {
  std::string out, item;
  std::stringstream list(opts);
  while (std::getline(list, item, ',')) out += (out.empty() ? "" : ",") + prefix(fmt) + item;
  return out;
}

// `tool` ("qemu-img" or vdimg) amend -o OPTS (already prefixed) of the image opened with `key`.
// qemu-img times PBKDF2 with a millisecond CPU clock and now and then gives up ("Unable to
// get accurate CPU usage", support.h): asked again, with a longer iter-time at the end.
CmdResult amend(const std::string& tool, const std::string& fmt, const std::string& path, const std::string& key,
                const std::string& opts, bool force = false) {
  CmdResult r;
  for (int attempt = 0; attempt < 8; ++attempt) {
    std::string o = opts;
    if (attempt >= 5)
      if (size_t at = o.find("iter-time=10"); at != std::string::npos) o.replace(at, 12, "iter-time=100");
    std::vector<std::string> argv = {tool == "qemu-img" ? "qemu-img" : vdtest::vdimg_path(), "amend"};
    argv.insert(argv.end(), kSecrets.begin(), kSecrets.end());
    if (force) argv.push_back("--force");
    argv.insert(argv.end(), {"--image-opts", "-o", o, image_opts(fmt, path, key)});
    r = vdtest::run(argv);
    if (r.exit_code == 0 || r.err.find("accurate CPU usage") == std::string::npos) break;
  }
  return r;
}

// qemu-io reads the fixture's pattern with `key`.
bool qemu_reads(const std::string& fmt, const std::string& path, const std::string& key) {
  std::vector<std::string> argv = {"qemu-io"};
  argv.insert(argv.end(), kSecrets.begin(), kSecrets.end());
  argv.insert(argv.end(), {"--image-opts", "-c", "read -P 7 0 64k", image_opts(fmt, path, key)});
  CmdResult r = vdtest::run(argv);
  return r.exit_code == 0 && r.out.find("read 65536/65536") != std::string::npos &&
         r.out.find("failed") == std::string::npos;
}

// vdimg io reads the pattern with the passphrase `pw` (--passphrase-file).
bool vdimg_reads(const TempDir& dir, const std::string& path, const std::string& pw) {
  const std::string pwfile = dir.file("pass-" + pw);
  std::ofstream(pwfile) << pw;
  return vdtest::vdimg({"io", "--passphrase-file", pwfile, "-c", "read -P 7 0 64k", path}).exit_code == 0;
}

unsigned active_slots(const std::string& path) {
  std::string info = vdtest::sh("qemu-img info '" + path + "'");
  unsigned n = 0;
  for (size_t at = 0; (at = info.find("active: true", at)) != std::string::npos; ++at) ++n;
  return n;
}

class LuksAmend : public ::testing::TestWithParam<std::string> {
 protected:
  const std::string& fmt() const { return GetParam(); }

  // A 4 MiB image unlocked by s0 (pw0), its first 64 KiB written with 7s.
  std::string make(const std::string& name) {
    const std::string path = dir_.file(name);
    const std::string opts = fmt() == "luks" ? "key-secret=sec0" : "encrypt.format=luks,encrypt.key-secret=sec0";
    CmdResult c = vdtest::qemu_img_create_luks(fmt(), opts, path, "4M", "pw0");
    EXPECT_EQ(c.exit_code, 0) << c.err;
    std::vector<std::string> argv = {"qemu-io"};
    argv.insert(argv.end(), kSecrets.begin(), kSecrets.end());
    argv.insert(argv.end(), {"--image-opts", "-c", "write -P 7 0 64k", image_opts(fmt(), path, "s0")});
    EXPECT_EQ(vdtest::run(argv).exit_code, 0);
    return path;
  }

  std::string copy(const std::string& from, const std::string& name) {
    vdtest::write_file(dir_.file(name), vdtest::read_file(from));
    return dir_.file(name);
  }

  // qemu-img check clean (QCOW2; qemu has no check for luks) and the same `info` from both.
  void expect_consistent(const std::string& path, const std::string& key) {
    if (fmt() == "qcow2") {
      std::vector<std::string> argv = {"qemu-img", "check"};
      argv.insert(argv.end(), kSecrets.begin(), kSecrets.end());
      argv.insert(argv.end(), {"--image-opts", image_opts(fmt(), path, key)});
      CmdResult chk = vdtest::run(argv);
      EXPECT_EQ(chk.exit_code, 0) << chk.out << chk.err;
    }
    for (const char* output : {"--output=human", "--output=json"}) {
      CmdResult mine = vdtest::vdimg({"info", output, path});
      CmdResult theirs = vdtest::run({"qemu-img", "info", output, path});
      EXPECT_EQ(mine.out, theirs.out) << output;
    }
  }

  TempDir dir_;
};

TEST_P(LuksAmend, KeysAddedAndErasedByVdimgWorkInQemu) {
  VD_REQUIRE_QCOW2();
  const std::string img = make("a." + fmt());
  CmdResult r = amend("vdimg", fmt(), img, "s0", prefixed(fmt(), "state=active,new-secret=s1,iter-time=10"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(active_slots(img), 2u);
  EXPECT_TRUE(qemu_reads(fmt(), img, "s1"));
  EXPECT_TRUE(qemu_reads(fmt(), img, "s0"));
  expect_consistent(img, "s1");

  // An explicit slot, opened with the key just added.
  r = amend("vdimg", fmt(), img, "s1", prefixed(fmt(), "state=active,new-secret=s2,iter-time=10,keyslot=6"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string info = vdtest::sh("qemu-img info '" + img + "'");
  const size_t slot6 = info.find("[6]:");
  ASSERT_NE(slot6, std::string::npos) << info;
  EXPECT_EQ(info.find("active: true", slot6), info.find("active:", slot6)) << info;
  EXPECT_TRUE(qemu_reads(fmt(), img, "s2"));

  // Erase by slot, then by password.
  r = amend("vdimg", fmt(), img, "s0", prefixed(fmt(), "state=inactive,keyslot=1"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(qemu_reads(fmt(), img, "s1"));
  r = amend("vdimg", fmt(), img, "s2", prefixed(fmt(), "state=inactive,old-secret=s0"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(qemu_reads(fmt(), img, "s0"));
  EXPECT_TRUE(qemu_reads(fmt(), img, "s2"));
  EXPECT_TRUE(vdimg_reads(dir_, img, "pw2"));
  EXPECT_FALSE(vdimg_reads(dir_, img, "pw0"));
  EXPECT_EQ(active_slots(img), 1u);
  expect_consistent(img, "s2");
}

TEST_P(LuksAmend, KeysAddedAndErasedByQemuWorkInVdimg) {
  VD_REQUIRE_QCOW2();
  const std::string img = make("q." + fmt());
  CmdResult r = amend("qemu-img", fmt(), img, "s0", prefixed(fmt(), "state=active,new-secret=s1,iter-time=10,keyslot=3"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(vdimg_reads(dir_, img, "pw1"));
  expect_consistent(img, "s1");
  // vdimg opened with --passphrase-file, the secrets named by the options still --object.
  std::ofstream(dir_.file("pw1")) << "pw1";
  std::vector<std::string> argv = {"amend"};
  argv.insert(argv.end(), kSecrets.begin(), kSecrets.end());
  argv.insert(argv.end(), {"--passphrase-file", dir_.file("pw1"), "-o",
                           prefixed(fmt(), "state=inactive,old-secret=s0"), img});
  r = vdtest::vdimg(argv);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(qemu_reads(fmt(), img, "s0"));
  r = amend("qemu-img", fmt(), img, "s1", prefixed(fmt(), "state=active,new-secret=s2,iter-time=10"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = amend("qemu-img", fmt(), img, "s2", prefixed(fmt(), "state=inactive,old-secret=s1"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(vdimg_reads(dir_, img, "pw2"));
  EXPECT_FALSE(vdimg_reads(dir_, img, "pw1"));
  expect_consistent(img, "s2");
}

// Every refusal of qemu-img's key slot amend, on a fixture with slot 0 (s0) active: the same
// message and exit code, and vdimg leaves the image as it was.
TEST_P(LuksAmend, RefusalsMatchQemuImg) {
  VD_REQUIRE_QCOW2();
  const std::string fixture = make("fixture." + fmt());
  const std::string original = vdtest::sha256_file(fixture);
  std::vector<std::string> cases;
  for (const char* o :
       {"new-secret=s1", "state=foo,new-secret=s1", "state=active", "state=active,new-secret=s1,old-secret=s0",
        "state=active,new-secret=s1,keyslot=9", "state=active,new-secret=s1,keyslot=-1",
        "state=active,new-secret=s1,keyslot=0", "state=active,new-secret=s1,keyslot=4294967296",
        "state=active,new-secret=s9", "state=active,new-secret=s1,keyslot=x", "state=active,new-secret=s1,iter-time=y",
        "state=inactive,keyslot=18446744073709551615", "state=inactive,keyslot=99999999999999999999",
        "state=inactive,new-secret=s1", "state=inactive,iter-time=10", "state=inactive", "state=inactive,keyslot=3",
        "state=inactive,keyslot=-1", "state=inactive,keyslot=0x9", "state=inactive,keyslot=0,old-secret=s2",
        "state=inactive,old-secret=s2", "state=inactive,old-secret=s9", "state=inactive,old-secret=s0",
        "state=inactive,keyslot=0", "state=inactive,keyslot=0,old-secret=s0", "state=active,secret=s0"})
    cases.push_back(prefixed(fmt(), o));
  if (fmt() == "luks") {
    for (const char* o : {"size=1M", "cipher-alg=aes-128", "key-secret=s0", "preallocation=off", "foo=1"})
      cases.push_back(o);
  } else {
    for (const char* o : {"encrypt.format=luks,encrypt.state=active", "encrypt.key-secret=s0"}) cases.push_back(o);
  }
  for (const auto& o : cases) {
    SCOPED_TRACE(o);
    const std::string theirs_img = copy(fixture, "theirs"), mine_img = copy(fixture, "mine");
    CmdResult theirs = amend("qemu-img", fmt(), theirs_img, "s0", o);
    CmdResult mine = amend("vdimg", fmt(), mine_img, "s0", o);
    EXPECT_EQ(mine.exit_code, theirs.exit_code);
    EXPECT_EQ(vdtest::without_tool_prefix(mine.err), vdtest::without_tool_prefix(theirs.err));
    EXPECT_NE(mine.exit_code, 0);
    EXPECT_EQ(vdtest::sha256_file(mine_img), original);
  }
  // -o help, and the image named without its key or with a wrong one.
  CmdResult theirs = vdtest::run({"qemu-img", "amend", "-o", "help", fixture});
  CmdResult mine = vdtest::vdimg({"amend", "-o", "help", fixture});
  EXPECT_EQ(mine.exit_code, theirs.exit_code);
  EXPECT_EQ(vdtest::without_tool_prefix(mine.err), vdtest::without_tool_prefix(theirs.err));
  theirs = amend("qemu-img", fmt(), fixture, "s0", "help");
  mine = amend("vdimg", fmt(), fixture, "s0", "help");
  EXPECT_EQ(mine.out, theirs.out);
  // A wrong key, an undefined one, a missing file: named as --image-opts gave them.
  for (const auto& [path, key] : std::vector<std::pair<std::string, std::string>>{
           {fixture, "s1"}, {fixture, "s7"}, {dir_.file("missing"), "s0"}}) {
    theirs = amend("qemu-img", fmt(), path, key, prefixed(fmt(), "state=active,new-secret=s2"));
    mine = amend("vdimg", fmt(), path, key, prefixed(fmt(), "state=active,new-secret=s2"));
    EXPECT_EQ(mine.exit_code, theirs.exit_code) << key;
    EXPECT_EQ(vdtest::without_tool_prefix(mine.err), vdtest::without_tool_prefix(theirs.err));
  }
}

// --force as qemu-img: an active slot overwritten (here the only one: the old key stops
// working, the new one opens the data), then the last slot erased.
TEST_P(LuksAmend, ForceOverwritesAndErasesAsQemuImg) {
  VD_REQUIRE_QCOW2();
  const std::string fixture = make("f." + fmt());
  const std::string theirs_img = copy(fixture, "theirs"), mine_img = copy(fixture, "mine");
  for (const std::string& img : {theirs_img, mine_img}) {
    CmdResult r = amend(img == mine_img ? "vdimg" : "qemu-img", fmt(), img, "s0",
                        prefixed(fmt(), "state=active,new-secret=s1,keyslot=0,iter-time=10"), true);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(qemu_reads(fmt(), img, "s1"));
    EXPECT_FALSE(qemu_reads(fmt(), img, "s0"));
    EXPECT_EQ(active_slots(img), 1u);
  }
  expect_consistent(mine_img, "s1");
  for (const std::string& img : {theirs_img, mine_img}) {
    CmdResult r = amend(img == mine_img ? "vdimg" : "qemu-img", fmt(), img, "s1",
                        prefixed(fmt(), "state=inactive,keyslot=0"), true);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_FALSE(qemu_reads(fmt(), img, "s1"));
    EXPECT_EQ(active_slots(img), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, LuksAmend, ::testing::Values("luks", "qcow2"));

// QCOW2: key slots and other options in one amend, in QEMU's order (the key slots before a
// downgrade).
TEST(LuksAmendQcow2, KeySlotsWithACompatChange) {
  VD_REQUIRE_QCOW2();
  TempDir dir;
  const std::string img = dir.file("c.qcow2");
  CmdResult c = vdtest::qemu_img_create_luks("qcow2", "encrypt.format=luks,encrypt.key-secret=sec0", img, "4M", "pw0");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  CmdResult r = amend("vdimg", "qcow2", img, "s0", "encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=10,compat=0.10");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string info = vdtest::sh("qemu-img info '" + img + "'");
  EXPECT_NE(info.find("compat: 0.10"), std::string::npos) << info;
  EXPECT_EQ(active_slots(img), 2u);
  CmdResult chk = vdtest::run({"qemu-img", "check", "--object", "secret,id=s1,data=pw1", "--image-opts",
                               image_opts("qcow2", img, "s1")});
  EXPECT_EQ(chk.exit_code, 0) << chk.out << chk.err;
  // Without a LUKS header: qemu-img's refusal.
  vdtest::sh("qemu-img create -q -f qcow2 '" + dir.file("plain.qcow2") + "' 1M");
  CmdResult theirs = vdtest::run({"qemu-img", "amend", "-o", "encrypt.state=active", dir.file("plain.qcow2")});
  CmdResult mine = vdtest::vdimg({"amend", "-o", "encrypt.state=active", dir.file("plain.qcow2")});
  EXPECT_EQ(mine.exit_code, theirs.exit_code);
  EXPECT_EQ(vdtest::without_tool_prefix(mine.err), vdtest::without_tool_prefix(theirs.err));
}

}  // namespace
