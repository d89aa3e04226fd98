// Allocation edge found while building the refcount-block fixtures: with 512-byte clusters
// and 64-bit refcounts a refcount block describes 64 clusters and lives in the first of them,
// so no run of 64 free clusters can exist. A 32 KiB write filling one L2 table's range needs
// exactly such a run. The write runs in a child process so that a hang fails the test
// instead of stalling the suite.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "faults/step_util.h"

namespace vdtest::faults {
namespace {

// Regression: Refcounts::allocate used to loop forever when `count` clusters could not fit
// between two self-describing refcount blocks (count >= entries per block). New blocks are
// now placed outside the run being allocated.
TEST(AllocationEdge, WriteOfOneFullRefcountBlockOfClustersTerminates) {
  VD_REQUIRE_QEMU();
  const Files f = make_files("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 top.qcow2 4M",
                             {"top.qcow2"});
  const Bytes data = pattern(32768, 41);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    Rig rig(f);
    bool ok = !rig.open() && !rig.write(0, data) && !rig.flush();
    if (ok) {
      const Bytes all = rig.read_all();
      ok = all.size() >= data.size() && std::equal(data.begin(), data.end(), all.begin());
    }
    // A failure recorded in the child (e.g. a synchronous call on the data path) is lost with
    // it: report it through the exit status.
    if (::testing::Test::HasFailure()) ok = false;
    std::_Exit(ok ? 0 : 1);
  }
  int status = 0;
  for (int waited = 0; waited < 100 && waitpid(child, &status, WNOHANG) == 0; ++waited)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (waitpid(child, &status, WNOHANG) == 0) {
    kill(child, SIGKILL);
    waitpid(child, &status, 0);
    FAIL() << "the 32 KiB write did not finish within 10 s";
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the write failed or read back wrong";
}

}  // namespace
}  // namespace vdtest::faults
