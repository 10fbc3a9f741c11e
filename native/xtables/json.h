// A small strict JSON parser (RFC 8259) for the plans JavaScript hands over as JSON.stringify text:
// plain C++ data, no N-API, so it runs on worker threads. The document is one flat array of nodes in
// text order ("tape"), strings point into the text unless they had escapes: a large plan costs a few
// allocations, not one per value. Nesting is limited (kMaxJsonDepth) so hostile input cannot exhaust
// the stack.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace iptlb {

constexpr int kMaxJsonDepth = 64;

class JsonDoc {
 public:
  enum Type : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
  static constexpr uint32_t kNone = UINT32_MAX;

  // Parses all of `text` (kept by the document); false with *error saying where and why.
  bool Parse(std::string text, std::string *error);

  // Node 0 is the root. For a node index:
  Type type(uint32_t n) const { return nodes_[n].type; }
  bool boolean(uint32_t n) const { return nodes_[n].a != 0; }
  double number(uint32_t n) const { return numbers_[nodes_[n].a]; }
  std::string string(uint32_t n) const { return std::string(Chars(n), nodes_[n].b); }
  bool StringEquals(uint32_t n, const char *s, size_t len) const;
  // Arrays: element count and the i-th element.
  uint32_t length(uint32_t n) const { return nodes_[n].b; }
  uint32_t at(uint32_t n, uint32_t i) const { return children_[nodes_[n].a + i]; }
  // Objects: the value of member `key` (the last one when repeated, as JSON.parse), or kNone.
  uint32_t Find(uint32_t n, const char *key) const;

 private:
  // 16 bytes a node: a large plan's tape stays small (memory first touched is what costs most).
  struct Node {
    uint32_t end = 0;  // node index after this node's subtree
    // string: offset into text_ (or into unescaped_ when `pooled`), length
    // array: index into children_, element count; object: -, member count (keys start at n + 1)
    // number: index into numbers_; bool: value
    uint32_t a = 0;
    uint32_t b = 0;
    Type type = kNull;
    bool pooled = false;
  };
  const char *Chars(uint32_t n) const { return (nodes_[n].pooled ? unescaped_.data() : text_.data()) + nodes_[n].a; }
  std::string text_;
  std::vector<Node> nodes_;
  std::vector<uint32_t> children_;  // array elements' node indexes, array by array
  std::vector<double> numbers_;
  std::string unescaped_;  // strings that had escapes, decoded, one after another
  friend class JsonParser;
};

}  // namespace iptlb
