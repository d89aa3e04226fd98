// The io_uring provider (host/io_uring.cpp), made by the Runtime when asked for.
#pragma once

#include <liburing.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/thread_pool.hpp>
#include <memory>
#include <optional>

#include "vd/io.h"

namespace vd::detail {

// How the ring is set up; the defaults are what the Runtime uses (tests change them).
struct UringSetup {
  // io_uring_setup flags tried first. A kernel that refuses them (EINVAL: older than the
  // flags) gets a ring without them. COOP_TASKRUN: a completion does not interrupt the
  // submitting thread (an IPI, costly in a VM); its CQE is posted the next time that thread
  // enters the kernel, which the loop does at every submission, and TASKRUN_FLAG tells the
  // loop (liburing's peek) to enter it when nothing else would. Not SINGLE_ISSUER (and so
  // not DEFER_TASKRUN): any thread may submit. Linux 5.19.
  unsigned flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  // Slots of the registered file table (IOSQE_FIXED_FILE); a file opened when every slot
  // is taken, or that holds image locks, uses its descriptor. 0: no table.
  unsigned fixed_files = 256;
  // The longest the executor keeps looking at the completion queue after its last
  // completion before it sleeps on the ring's eventfd (adaptive below that). O_DIRECT
  // reads on an SSD complete within tens of microseconds of each other at any useful
  // depth; qemu's adaptive polling tops out at 32 µs by default.
  unsigned poll_us = 50;

  // The defaults with what VD_URING_FLAGS, VD_URING_FILES and VD_URING_POLL_US say
  // instead (numbers; for benchmarks comparing them).
  static UringSetup from_env();
};

// nullptr when the kernel refuses a ring (old kernel, seccomp): the caller uses threads.
// Without `setup`: UringSetup::from_env().
std::unique_ptr<IoProvider> make_uring_provider(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool);
std::unique_ptr<IoProvider> make_uring_provider(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool,
                                                const UringSetup& setup);

// What a ring got from the kernel, for tests; nullopt when `p` is no io_uring provider.
struct UringStats {
  unsigned flags = 0;        // io_uring_setup flags in use
  unsigned table_size = 0;   // registered file slots (0: none)
  unsigned slots_used = 0;   // slots holding an open file
  uint64_t ops_made = 0;     // operation records allocated (reused after that)
  uint64_t sleeps = 0;       // times the executor stopped polling and waited on the eventfd
};
std::optional<UringStats> uring_stats(IoProvider& p);

}  // namespace vd::detail
