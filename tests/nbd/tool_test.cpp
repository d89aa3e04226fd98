// The vd-nbd binary driven by real clients (qemu-io, qemu-img, nbdinfo), as scripts written
// for qemu-nbd drive it. The big client, differential and guest-boot suites live in
// tests/nbd-clients/; these are the smoke tests of the command line.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include <chrono>
#include <fstream>
#include <thread>

#include "support/support.h"
#include <gtest/gtest.h>

namespace {

using vdtest::CmdResult;
using vdtest::run;
using vdtest::sh;

bool have(const char* tool) { return run({"/bin/sh", "-c", std::string("command -v ") + tool}).exit_code == 0; }

// nbdinfo needs the system python (see docs/nbd.md).
std::string nbdinfo() { return "PATH=/usr/bin:$PATH nbdinfo"; }

// A process that is gone or a zombie.
bool gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  auto close = line.rfind(')');
  return close != std::string::npos && line.size() > close + 2 && line[close + 2] == 'Z';
}

bool wait_gone(pid_t pid, int ms = 10000) {
  for (int i = 0; i < ms / 20; ++i) {
    if (gone(pid)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

class VdNbdTool : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!vdtest::have_qemu() || !have("nbdinfo")) GTEST_SKIP() << "qemu-img or nbdinfo missing";
    base_ = dir_.file("base.qcow2");
    top_ = dir_.file("top.qcow2");
    sock_ = dir_.file("s.sock");
    sh("qemu-img create -q -f qcow2 " + base_ + " 4M && qemu-io -c 'write -P 1 0 1M' " + base_ +
       " >/dev/null && qemu-img create -q -f qcow2 -b " + base_ + " -F qcow2 " + top_ +
       " && qemu-io -c 'write -P 2 512k 64k' -c 'write -z 2M 64k' " + top_ + " >/dev/null");
  }
  void TearDown() override {
    if (pid_ > 0 && !gone(pid_)) {
      kill(pid_, SIGKILL);
      wait_gone(pid_);
    }
  }
  // Starts vd-nbd --fork with `args`; returns its exit code (the server's pid in pid_).
  int start(const std::string& args) {
    std::string pidfile = dir_.file("pid");
    CmdResult r = run({"/bin/sh", "-c", std::string(VD_NBD_PATH) + " --fork --pid-file " + pidfile + " " + args});
    last_err_ = r.err;
    if (r.exit_code == 0) {
      std::ifstream in(pidfile);
      in >> pid_;
    }
    return r.exit_code;
  }
  std::string uri(const std::string& name = "") { return "'nbd+unix:///" + name + "?socket=" + sock_ + "'"; }

  vdtest::TempDir dir_;
  std::string base_, top_, sock_, last_err_;
  pid_t pid_ = -1;
};

TEST_F(VdNbdTool, QemuIoReadsAndWritesThroughTheChainAndSigtermFlushesAndExits) {
  ASSERT_EQ(start("-t -f qcow2 -k " + sock_ + " " + top_), 0) << last_err_;
  sh("qemu-io -f raw -c 'read -P 2 512k 64k' -c 'read -P 1 0 512k' -c 'write -P 7 3M 100k' "
     "-c 'write -z 0 4k' -c 'discard 1M 64k' -c flush " + uri() + " >/dev/null");
  std::string info = sh("qemu-img info -f raw " + uri());
  EXPECT_NE(info.find("4 MiB"), std::string::npos) << info;
  kill(pid_, SIGTERM);
  ASSERT_TRUE(wait_gone(pid_));
  sh("qemu-img check -q " + top_);
  sh("qemu-io -c 'read -P 7 3M 100k' -c 'read -P 0 0 4k' -c 'read -P 2 516k 60k' " + top_ + " >/dev/null");
}

TEST_F(VdNbdTool, WithoutPersistentItExitsAfterTheLastClient) {
  ASSERT_EQ(start("-k " + sock_ + " " + top_), 0) << last_err_;
  sh(nbdinfo() + " --size " + uri());
  EXPECT_TRUE(wait_gone(pid_));
}

TEST_F(VdNbdTool, SeveralExportsAreListedAndMappedLikeQemuNbd) {
  std::string other = dir_.file("other.raw");
  sh("qemu-img create -q -f raw " + other + " 1M");
  ASSERT_EQ(start("-t -A -e 0 -k " + sock_ + " -x top -D 'chain top' " + top_ + " -x raw " + other), 0) << last_err_;
  std::string list = sh(nbdinfo() + " --list --json " + uri("top"));
  EXPECT_NE(list.find("\"export-name\": \"top\""), std::string::npos) << list;
  EXPECT_NE(list.find("\"export-name\": \"raw\""), std::string::npos) << list;
  EXPECT_NE(list.find("chain top"), std::string::npos) << list;
  EXPECT_EQ(sh(nbdinfo() + " --can multi-conn " + uri("top") + " && echo yes"), "yes\n");
  std::string ours = sh(nbdinfo() + " --map " + uri("top")) + sh(nbdinfo() + " --map=qemu:allocation-depth " + uri("top"));
  kill(pid_, SIGTERM);
  ASSERT_TRUE(wait_gone(pid_));
  // The same maps from qemu-nbd.
  std::string qsock = dir_.file("q.sock");
  std::string qpid = dir_.file("q.pid");
  sh("qemu-nbd --fork --pid-file " + qpid + " -t -r -A -k " + qsock + " " + top_);
  std::string quri = "'nbd+unix:///?socket=" + qsock + "'";
  std::string theirs = sh(nbdinfo() + " --map " + quri) + sh(nbdinfo() + " --map=qemu:allocation-depth " + quri);
  sh("kill $(cat " + qpid + ")");
  EXPECT_EQ(ours, theirs);
}

TEST_F(VdNbdTool, RefusesWhatItCannotDo) {
  CmdResult r = run({VD_NBD_PATH, "-B", "bm0", "-k", sock_, top_});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Bitmap 'bm0' is not found"), std::string::npos) << r.err;  // qemu-nbd's words
  r = run({VD_NBD_PATH, "--aio=native", "-k", sock_, top_});
  EXPECT_EQ(r.exit_code, 1);
  r = run({VD_NBD_PATH, "--detect-zeroes=unmap", "-k", sock_, top_});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("not allowed without setting discard operation to unmap"), std::string::npos) << r.err;
  r = run({VD_NBD_PATH, "-k", sock_, dir_.file("missing.qcow2")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("missing.qcow2"), std::string::npos) << r.err;
  r = run({VD_NBD_PATH, "--tls-creds", "nope", "-k", sock_, top_});
  EXPECT_EQ(r.exit_code, 1);
  r = run({VD_NBD_PATH, "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--export-name"), std::string::npos);
  // --fork reports a failure to open through the parent's exit code.
  EXPECT_EQ(start("-k " + sock_ + " " + dir_.file("missing.qcow2")), 1);
}

TEST_F(VdNbdTool, TlsClientsQemuImgAndNbdinfo) {
  if (!have("certtool")) GTEST_SKIP() << "certtool missing";
  std::string tls = dir_.file("tls");
  sh(std::string(VD_NBD_TEST_DIR) + "/make-tls-certs.sh " + tls);
  ASSERT_EQ(start("-t -r -k " + sock_ + " --object tls-creds-x509,id=t0,endpoint=server,dir=" + tls +
                  " --tls-creds t0 " + top_), 0) << last_err_;
  std::string out = sh(nbdinfo() + " 'nbds+unix:///?socket=" + sock_ + "&tls-certificates=" + tls + "'");
  EXPECT_NE(out.find("with TLS"), std::string::npos) << out;
  sh("qemu-io -r --object tls-creds-x509,id=t0,endpoint=client,dir=" + tls +
     " --image-opts driver=nbd,path=" + sock_ + ",tls-creds=t0,tls-hostname=localhost -c 'read -P 2 512k 64k' >/dev/null");
  CmdResult plain = run({"/bin/sh", "-c", nbdinfo() + " " + uri()});
  EXPECT_NE(plain.exit_code, 0);
}

TEST_F(VdNbdTool, SocketActivationServesTheInheritedSocket) {
  int l = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", sock_.c_str());
  ASSERT_EQ(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(l, 4), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // As systemd: the listening socket is fd 3, LISTEN_PID names the server.
    if (l != 3) {
      dup2(l, 3);
      close(l);
    }
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    setenv("LISTEN_FDS", "1", 1);
    execl(VD_NBD_PATH, "vd-nbd", "-t", "-r", top_.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(l);
  EXPECT_EQ(sh(nbdinfo() + " --size " + uri()), "4194304\n");
  kill(child, SIGTERM);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace

namespace {

TEST_F(VdNbdTool, VerifyPeerOnRefusesAClientWithoutACertificate) {
  if (!have("certtool")) GTEST_SKIP() << "certtool missing";
  std::string tls = dir_.file("tls"), anon = dir_.file("anon");
  sh(std::string(VD_NBD_TEST_DIR) + "/make-tls-certs.sh " + tls + " && mkdir " + anon + " && cp " + tls +
     "/ca-cert.pem " + anon);
  auto client = [&](const std::string& dir) {
    return run({"/bin/sh", "-c", nbdinfo() + " --size 'nbds+unix:///?socket=" + sock_ + "&tls-certificates=" + dir + "'"});
  };
  ASSERT_EQ(start("-t -k " + sock_ + " --object tls-creds-x509,id=t0,endpoint=server,dir=" + tls + " --tls-creds t0 " + top_), 0)
      << last_err_;
  EXPECT_EQ(client(tls).exit_code, 0);
  EXPECT_NE(client(anon).exit_code, 0);
  kill(pid_, SIGTERM);
  ASSERT_TRUE(wait_gone(pid_));
  ASSERT_EQ(start("-t -k " + sock_ + " --object tls-creds-x509,id=t0,endpoint=server,dir=" + tls +
                  ",verify-peer=off --tls-creds t0 " + top_), 0) << last_err_;
  EXPECT_EQ(client(anon).exit_code, 0);
}

TEST_F(VdNbdTool, KilledMidWritesTheImageChecksWithAtMostLeaks) {
  if (!have("fio")) GTEST_SKIP() << "fio missing";
  ASSERT_EQ(start("-t -e 0 -k " + sock_ + " " + top_), 0) << last_err_;
  std::string job = "fio --name=w --ioengine=nbd --uri='nbd+unix:///?socket=" + sock_ +
                    "' --rw=randwrite --bs=64k --iodepth=16 --size=4M --time_based --runtime=5 >/dev/null 2>&1";
  pid_t fio = fork();
  ASSERT_GE(fio, 0);
  if (fio == 0) {
    execl("/bin/sh", "sh", "-c", job.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  kill(pid_, SIGKILL);
  ASSERT_TRUE(wait_gone(pid_));
  int status = 0;
  waitpid(fio, &status, 0);
  CmdResult r = run({"qemu-img", "check", top_});
  EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 3) << r.out << r.err;
}

}  // namespace

namespace {

TEST_F(VdNbdTool, PassphraseFileOpensAnEncryptedImage) {
  std::string enc = dir_.file("enc.qcow2"), pass = dir_.file("pass");
  sh("printf secret > " + pass);
  ASSERT_EQ(vdtest::vdimg({"create", "-f", "qcow2", "-o", "encrypt.format=luks", "--passphrase-file", pass, enc, "1M"}).exit_code, 0);
  ASSERT_EQ(vdtest::vdimg({"io", "--passphrase-file", pass, "-c", "write -P 6 0 64k", enc}).exit_code, 0);
  EXPECT_EQ(start("-k " + sock_ + " " + enc), 1);  // no passphrase: refused
  ASSERT_EQ(start("-k " + sock_ + " --passphrase-file " + pass + " " + enc), 0) << last_err_;
  sh("qemu-io -f raw -c 'read -P 6 0 64k' " + uri() + " >/dev/null");
}

}  // namespace
