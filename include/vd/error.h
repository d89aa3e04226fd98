// vd error model: a small set of stable kinds in one std::error_category, plus a
// message that names the image, the structure and the offset involved.
//
// No exception crosses the vd interfaces. Functions return `Error` (empty on success)
// or `Result<T>`; asynchronous operations hand an `Error` to their completion.
#pragma once

#include <cstdint>
#include <string>
#include <system_error>
#include <utility>
#include <variant>

namespace vd {

// Stable error kinds. Values are part of the plugin ABI: append only.
enum class Errc : int {
  corrupt = 1,       // on-disk structures are inconsistent or point where they must not
  not_supported,     // valid image using a feature or option this build does not implement
  io,                // the storage failed (the system error is in the message)
  read_only,         // write to an image or disk opened read-only
  not_allocated,     // range not held by this image (internal to the chain logic)
  invalid_argument,  // caller error: bad offset, size, option or command
  not_found,         // file, parent, snapshot or format missing
  wrong_format,      // file is not in the requested format
  wrong_passphrase,  // decryption key did not unlock the image
  too_large,         // a size beyond what the format or this implementation allows
  out_of_range,      // access beyond the end of the virtual disk
  permission,        // refused by policy (e.g. raw probe guard on sector 0)
  busy,              // image locked or in use
  canceled,
  exists,            // create over an existing file without permission to overwrite
  no_space,
  internal,          // a broken invariant inside vd; always a bug
};

const std::error_category& vd_category() noexcept;
std::error_code make_error_code(Errc e) noexcept;

// An error code with the context that makes it actionable. Empty means success.
class Error {
 public:
  Error() = default;
  Error(Errc e, std::string message) : code_(make_error_code(e)), message_(std::move(message)) {}
  Error(std::error_code code, std::string message) : code_(code), message_(std::move(message)) {}

  // An I/O error from errno, with what was being done ("read of 'x.qcow2' at 0x1000").
  static Error from_errno(int err, const std::string& what);

  explicit operator bool() const noexcept { return static_cast<bool>(code_); }
  const std::error_code& code() const noexcept { return code_; }
  bool is(Errc e) const noexcept { return code_ == make_error_code(e); }

  // Full human-readable text: the context message, or the code's text if there is none.
  std::string message() const { return message_.empty() ? code_.message() : message_; }

  // Prefix more context: Error(...).wrap("open 'a.qcow2'") -> "open 'a.qcow2': ...".
  Error wrap(const std::string& context) const {
    if (!code_) return *this;
    return Error(code_, context + ": " + message());
  }

 private:
  std::error_code code_;
  std::string message_;
};

// Value or error (std::expected is C++23).
template <class T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}      // NOLINT
  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const {
    static const Error none;
    return ok() ? none : std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

// Formats an offset as 0x... for messages.
std::string hex(uint64_t v);

}  // namespace vd

namespace std {
template <>
struct is_error_code_enum<vd::Errc> : true_type {};
}  // namespace std
