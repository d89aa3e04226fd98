// vd error model: a small set of stable kinds in one std::error_category, plus a
// message that names the image, the structure and the offset involved.
//
// No exception crosses the vd interfaces. Functions return `Error` (empty on success)
// or `Result<T>`; asynchronous operations hand an `Error` to their completion.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <variant>

#include "vd/export.h"

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

VD_API const std::error_category& vd_category() noexcept;
VD_API std::error_code make_error_code(Errc e) noexcept;

// An error: a stable kind (`Errc`, or any std::error_code) with the context that makes it
// actionable, kept as fields so that programs can act on them (a VM monitor maps the kind and
// errno to what it reports to the guest; vdimg names the image only when the error does not)
// and so that the message is built in one place, `message()`:
//
//   'PATH': OP STRUCTURE at OFFSET: DETAIL        (fields that are unset are left out)
//   'PATH': DETAIL                                (no op: DETAIL is the whole wording, e.g.
//                                                  QEMU's; structure and offset are metadata)
//
// A wrapped error (`wrap`) becomes the cause: its message follows the outer one after ": ",
// without its path when that is the outer one's too. Kind and errno pass up from the cause.
// Empty means success.
class VD_API Error {
 public:
  Error() = default;
  Error(Errc e, std::string detail) : code_(make_error_code(e)) { if (!detail.empty()) edit().detail = std::move(detail); }
  Error(std::error_code code, std::string detail) : code_(code) { if (!detail.empty()) edit().detail = std::move(detail); }

  // A failed system call: the kind follows errno (ENOENT not_found, ENOSPC no_space, ...),
  // the errno is kept, its text ends the message. `op` says what was done ("pread").
  static Error from_errno(int err, std::string op, std::string path = {},
                          std::optional<uint64_t> offset = std::nullopt);

  explicit operator bool() const noexcept { return static_cast<bool>(code_); }
  const std::error_code& code() const noexcept { return code_; }
  bool is(Errc e) const noexcept { return code_ == make_error_code(e); }
  // The vd kind, or Errc{} (0) for a code of another category.
  Errc kind() const noexcept;

  // ---- Context (setters chain: Error(...).image(p).structure("L2 table").at(off)) ----
  Error& image(std::string path) { edit().path = std::move(path); return *this; }
  Error& op(std::string op) { edit().op = std::move(op); return *this; }
  Error& structure(std::string s) { edit().structure = std::move(s); return *this; }
  Error& at(uint64_t offset) { edit().offset = offset; return *this; }
  Error& sys_errno(int err) { edit().err = err; return *this; }

  const std::string& path() const noexcept { return ctx().path; }
  const std::string& operation() const noexcept { return ctx().op; }
  const std::string& structure_name() const noexcept { return ctx().structure; }
  const std::optional<uint64_t>& offset() const noexcept { return ctx().offset; }
  // The errno of the system call that failed, here or in a cause; 0 if none.
  int system_errno() const noexcept { return ctx().err; }
  const std::string& detail() const noexcept { return ctx().detail; }
  const Error* cause() const noexcept { return ctx().cause.get(); }

  // Full human-readable text (see above); the code's text if there is nothing else.
  std::string message() const;

  // A new error around this one: same kind and errno, this one as its cause, and the
  // operation (and structure and offset) during which it happened. On success returns *this.
  //   e.wrap("reading", "L2 table", off).image(path)
  //     -> "'a.qcow2': reading L2 table at 0x30000: <this message>"
  Error wrap(std::string op, std::string structure = {},
             std::optional<uint64_t> offset = std::nullopt) const;

 private:
  // The context lives apart, shared and copied on write: a success (and an error being passed
  // along) is two words plus a pointer, cheap to copy through every completion.
  struct Context {
    std::string detail, path, op, structure;
    std::optional<uint64_t> offset;
    int err = 0;
    std::shared_ptr<const Error> cause;
  };
  const Context& ctx() const noexcept;
  Context& edit();
  std::string render(const std::string& outer_path) const;

  std::error_code code_;
  std::shared_ptr<Context> ctx_;
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
VD_API std::string hex(uint64_t v);

}  // namespace vd

namespace std {
template <>
struct is_error_code_enum<vd::Errc> : true_type {};
}  // namespace std
