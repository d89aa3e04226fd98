// Included first by every host/nbd source, before any Boost header.
//
// Boost 1.74 turns on Asio's co_await support for clang only with the Coroutines TS and
// libc++'s <experimental/coroutine>; clang 14 in C++20 mode has standard coroutines and
// libstdc++'s <coroutine>, which Asio already selects (BOOST_ASIO_HAS_STD_COROUTINE), so only
// the switch is missing. The macro is read only by Asio's coroutine headers (awaitable,
// co_spawn, use_awaitable), so defining it here changes no other Asio type.
#pragma once

#include <utility>  // Asio 1.74's awaitable.hpp uses std::exchange without including it

#if defined(__clang__) && !defined(BOOST_ASIO_HAS_CO_AWAIT) && defined(__cpp_impl_coroutine)
#if __cpp_impl_coroutine >= 201902
#define BOOST_ASIO_HAS_CO_AWAIT 1
#endif
#endif
