#include "host/vdimg/json.h"

#include <cstdio>

namespace vdimg {

Json& Json::set(std::string key, Json value) {
  if (!std::holds_alternative<Object>(v_)) v_ = Object{};
  std::get<Object>(v_).emplace_back(std::move(key), std::move(value));
  return *this;
}

Json& Json::push(Json value) {
  if (!std::holds_alternative<Array>(v_)) v_ = Array{};
  std::get<Array>(v_).push_back(std::move(value));
  return *this;
}

Json& Json::member(const std::string& key) {
  if (!std::holds_alternative<Object>(v_)) v_ = Object{};
  auto& o = std::get<Object>(v_);
  for (auto& [k, v] : o)
    if (k == key) return v;
  o.emplace_back(key, Json());
  return o.back().second;
}

Json& Json::element(size_t i) {
  if (!std::holds_alternative<Array>(v_)) v_ = Array{};
  auto& a = std::get<Array>(v_);
  if (a.size() <= i) a.resize(i + 1);
  return a[i];
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

namespace {

std::string scalar(const std::variant<std::nullptr_t, bool, int64_t, uint64_t, double, std::string,
                                      Json::Array, Json::Object>& v) {
  if (std::holds_alternative<bool>(v)) return std::get<bool>(v) ? "true" : "false";
  if (std::holds_alternative<int64_t>(v)) return std::to_string(std::get<int64_t>(v));
  if (std::holds_alternative<uint64_t>(v)) return std::to_string(std::get<uint64_t>(v));
  if (std::holds_alternative<double>(v)) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", std::get<double>(v));
    return buf;
  }
  if (std::holds_alternative<std::string>(v)) return json_quote(std::get<std::string>(v));
  return "null";
}

}  // namespace

std::string Json::text() const {
  if (auto* str = std::get_if<std::string>(&v_)) return *str;
  return scalar(v_);
}

std::string Json::pretty(int indent) const {
  std::string pad(static_cast<size_t>(indent), ' '), inner(static_cast<size_t>(indent + 4), ' ');
  if (auto* a = std::get_if<Array>(&v_)) {
    std::string out = "[\n";
    for (size_t i = 0; i < a->size(); ++i)
      out += inner + (*a)[i].pretty(indent + 4) + (i + 1 < a->size() ? ",\n" : "\n");
    return out + pad + "]";
  }
  if (auto* o = std::get_if<Object>(&v_)) {
    std::string out = "{\n";
    for (size_t i = 0; i < o->size(); ++i)
      out += inner + json_quote((*o)[i].first) + ": " + (*o)[i].second.pretty(indent + 4) +
             (i + 1 < o->size() ? ",\n" : "\n");
    return out + pad + "}";
  }
  return scalar(v_);
}

std::string Json::compact() const {
  if (auto* a = std::get_if<Array>(&v_)) {
    std::string out = "[";
    for (size_t i = 0; i < a->size(); ++i) out += (i ? ", " : "") + (*a)[i].compact();
    return out + "]";
  }
  if (auto* o = std::get_if<Object>(&v_)) {
    std::string out = "{";
    for (size_t i = 0; i < o->size(); ++i)
      out += (i ? ", " : "") + json_quote((*o)[i].first) + ": " + (*o)[i].second.compact();
    return out + "}";
  }
  return scalar(v_);
}

}  // namespace vdimg
