#include "vd/error.h"

#include <cstdio>
#include <cerrno>
#include <cstring>

namespace vd {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "vd"; }
  std::string message(int ev) const override {
    switch (static_cast<Errc>(ev)) {
      case Errc::corrupt: return "image is corrupt";
      case Errc::not_supported: return "not supported";
      case Errc::io: return "I/O error";
      case Errc::read_only: return "image is read-only";
      case Errc::not_allocated: return "range not allocated in this image";
      case Errc::invalid_argument: return "invalid argument";
      case Errc::not_found: return "not found";
      case Errc::wrong_format: return "wrong image format";
      case Errc::wrong_passphrase: return "wrong passphrase";
      case Errc::too_large: return "too large";
      case Errc::out_of_range: return "out of range";
      case Errc::permission: return "operation not permitted";
      case Errc::busy: return "busy";
      case Errc::canceled: return "canceled";
      case Errc::exists: return "already exists";
      case Errc::no_space: return "no space left";
      case Errc::internal: return "internal error";
    }
    return "unknown vd error " + std::to_string(ev);
  }
};

}  // namespace

const std::error_category& vd_category() noexcept {
  static const Category c;
  return c;
}

std::error_code make_error_code(Errc e) noexcept { return {static_cast<int>(e), vd_category()}; }

const Error::Context& Error::ctx() const noexcept {
  static const Context none;
  return ctx_ ? *ctx_ : none;
}

Error::Context& Error::edit() {
  if (!ctx_) ctx_ = std::make_shared<Context>();
  else if (ctx_.use_count() > 1) ctx_ = std::make_shared<Context>(*ctx_);  // copies share until one changes
  return *ctx_;
}

Error Error::from_errno(int err, std::string op, std::string path, std::optional<uint64_t> offset) {
  Errc kind = Errc::io;
  if (err == ENOENT) kind = Errc::not_found;
  else if (err == EEXIST) kind = Errc::exists;
  else if (err == ENOSPC) kind = Errc::no_space;
  else if (err == EROFS || err == EACCES || err == EPERM) kind = Errc::permission;
  else if (err == EFBIG) kind = Errc::too_large;
  else if (err == EINVAL) kind = Errc::invalid_argument;
  else if (err == EAGAIN || err == EWOULDBLOCK) kind = Errc::busy;
  Error e(kind, std::strerror(err));
  Context& c = e.edit();
  c.op = std::move(op);
  c.path = std::move(path);
  c.offset = offset;
  c.err = err;
  return e;
}

Errc Error::kind() const noexcept {
  return code_.category() == vd_category() ? static_cast<Errc>(code_.value()) : Errc{};
}

Error Error::wrap(std::string op, std::string structure, std::optional<uint64_t> offset) const {
  if (!code_) return *this;
  Error outer;
  outer.code_ = code_;
  Context& c = outer.edit();
  c.err = system_errno();
  c.op = std::move(op);
  c.structure = std::move(structure);
  c.offset = offset;
  c.cause = std::make_shared<const Error>(*this);
  return outer;
}

// The one place messages are put together (see error.h).
std::string Error::render(const std::string& outer_path) const {
  const Context& c = ctx();
  std::string out;
  if (!c.path.empty() && c.path != outer_path) out = "'" + c.path + "': ";
  std::string text = c.detail;
  if (!c.op.empty()) {
    std::string what = c.op;
    if (!c.structure.empty()) what += " " + c.structure;
    if (c.offset) what += " at " + hex(*c.offset);
    text = text.empty() ? what : what + ": " + text;
  }
  const std::string& inner_path = c.path.empty() ? outer_path : c.path;
  if (c.cause) {
    std::string why = c.cause->render(inner_path);
    text = text.empty() ? why : text + ": " + why;
  }
  if (text.empty()) text = code_.message();
  return out + text;
}

std::string Error::message() const { return render({}); }

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace vd
