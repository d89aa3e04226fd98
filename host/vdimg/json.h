// A small JSON value that keeps object keys in insertion order and prints in qemu-img's
// pretty style (4-space indent, `"key": value`), so `--output=json` reads like qemu-img's.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace vdimg {

class Json {
 public:
  using Object = std::vector<std::pair<std::string, Json>>;
  using Array = std::vector<Json>;

  Json() : v_(nullptr) {}
  Json(bool b) : v_(b) {}                                       // NOLINT
  Json(int v) : v_(static_cast<int64_t>(v)) {}                  // NOLINT
  Json(int64_t v) : v_(v) {}                                    // NOLINT
  Json(uint64_t v) : v_(v) {}                                   // NOLINT
  Json(unsigned v) : v_(static_cast<uint64_t>(v)) {}            // NOLINT
  Json(long long v) : v_(static_cast<int64_t>(v)) {}            // NOLINT
  Json(unsigned long long v) : v_(static_cast<uint64_t>(v)) {}  // NOLINT
  Json(double v) : v_(v) {}                                     // NOLINT
  Json(const char* s) : v_(std::string(s)) {}                   // NOLINT
  Json(std::string s) : v_(std::move(s)) {}                     // NOLINT
  Json(Array a) : v_(std::move(a)) {}                           // NOLINT
  Json(Object o) : v_(std::move(o)) {}                          // NOLINT

  static Json object() { return Json(Object{}); }
  static Json array() { return Json(Array{}); }

  // Appends a key (objects) or an element (arrays).
  Json& set(std::string key, Json value);
  Json& push(Json value);

  // The member `key` of an object (added as null if missing; a null becomes an object), and
  // element `i` of an array (grown with nulls; a null becomes an array).
  Json& member(const std::string& key);
  Json& element(size_t i);

  const Object* as_object() const { return std::get_if<Object>(&v_); }
  const Array* as_array() const { return std::get_if<Array>(&v_); }
  // A scalar as qemu-img's human output shows it: strings bare, true/false, numbers.
  std::string text() const;

  // qemu-img's multi-line layout, without a trailing newline.
  std::string pretty(int indent = 0) const;
  // One line: {"a": 1, "b": true}.
  std::string compact() const;

 private:
  std::variant<std::nullptr_t, bool, int64_t, uint64_t, double, std::string, Array, Object> v_;
};

std::string json_quote(const std::string& s);

}  // namespace vdimg
