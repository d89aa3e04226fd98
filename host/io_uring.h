// The io_uring provider (host/io_uring.cpp), made by the Runtime when asked for.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/thread_pool.hpp>
#include <memory>

#include "vd/io.h"

namespace vd::detail {

// nullptr when the kernel refuses a ring (old kernel, seccomp): the caller uses threads.
std::unique_ptr<IoProvider> make_uring_provider(boost::asio::any_io_executor ex, boost::asio::thread_pool& pool);

}  // namespace vd::detail
