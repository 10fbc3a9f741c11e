// A small strict JSON parser (RFC 8259) for the plans JavaScript hands over as JSON.stringify text:
// plain C++ data, no N-API, so it runs on worker threads. Nesting is limited (kMaxDepth) so that
// hostile input cannot exhaust the stack.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace iptlb {

struct Json {
  enum Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> items;                           // kArray
  std::vector<std::pair<std::string, Json>> members;  // kObject, in text order

  // The member named `key` (the last one when repeated, as JSON.parse), or nullptr.
  const Json *Find(const char *key) const;
};

constexpr int kMaxJsonDepth = 64;

// Parses all of `text` into *out; on failure returns false with *error saying where and why.
bool ParseJson(const std::string &text, Json *out, std::string *error);

}  // namespace iptlb
