#include "host/io_uring.h"

namespace vd::detail {
std::unique_ptr<IoProvider> make_uring_provider(boost::asio::any_io_executor, boost::asio::thread_pool&) {
  return nullptr;
}
}  // namespace vd::detail
