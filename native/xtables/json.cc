#include "json.h"

#include <cstdlib>
#include <cstring>

namespace iptlb {

bool JsonDoc::StringEquals(uint32_t n, const char *s, size_t len) const {
  return nodes_[n].b == len && std::memcmp(Chars(n), s, len) == 0;
}

uint32_t JsonDoc::Find(uint32_t n, const char *key) const {
  const size_t klen = std::strlen(key);
  uint32_t found = kNone;
  uint32_t k = n + 1;
  for (uint32_t i = 0; i < nodes_[n].b; i++) {
    if (StringEquals(k, key, klen)) found = k + 1;
    k = nodes_[k + 1].end;  // the key is one node; its value's subtree follows
  }
  return found;
}

class JsonParser {
 public:
  explicit JsonParser(JsonDoc *doc) : doc_(doc), p_(doc->text_.data()), begin_(p_), end_(p_ + doc->text_.size()) {}

  bool Parse(std::string *error) {
    doc_->nodes_.reserve(doc_->text_.size() / 10 + 16);
    if (!Value(0)) {
      *error = why_ + " at offset " + std::to_string(p_ - begin_);
      return false;
    }
    Space();
    if (p_ != end_) {
      *error = "unexpected text after the value at offset " + std::to_string(p_ - begin_);
      return false;
    }
    return true;
  }

 private:
  using Node = JsonDoc::Node;
  JsonDoc *doc_;
  const char *p_;
  const char *begin_;
  const char *end_;
  std::string why_;
  std::vector<uint32_t> stack_;  // elements of the arrays being parsed, innermost last

  bool Fail(const char *why) {
    why_ = why;
    return false;
  }
  void Space() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) p_++;
  }
  bool Literal(const char *word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) return Fail("invalid literal");
    p_ += n;
    return true;
  }
  uint32_t NewNode(JsonDoc::Type t) {
    doc_->nodes_.emplace_back();
    doc_->nodes_.back().type = t;
    return static_cast<uint32_t>(doc_->nodes_.size() - 1);
  }
  void Close(uint32_t n) { doc_->nodes_[n].end = static_cast<uint32_t>(doc_->nodes_.size()); }

  bool Value(int depth) {
    if (depth > kMaxJsonDepth) return Fail("nested too deeply");
    Space();
    if (p_ == end_) return Fail("unexpected end of text");
    switch (*p_) {
      case '{':
        return Object(depth);
      case '[':
        return Array(depth);
      case '"':
        return String();
      case 't':
      case 'f': {
        const uint32_t n = NewNode(JsonDoc::kBool);
        doc_->nodes_[n].a = *p_ == 't';
        Close(n);
        return Literal(*p_ == 't' ? "true" : "false");
      }
      case 'n':
        Close(NewNode(JsonDoc::kNull));
        return Literal("null");
      default:
        return Number();
    }
  }

  bool Object(int depth) {
    const uint32_t n = NewNode(JsonDoc::kObject);
    p_++;  // {
    Space();
    if (p_ != end_ && *p_ == '}') {
      p_++;
      Close(n);
      return true;
    }
    for (uint32_t count = 1;; count++) {
      Space();
      if (p_ == end_ || *p_ != '"') return Fail("expected a member name");
      if (!String()) return false;
      Space();
      if (p_ == end_ || *p_ != ':') return Fail("expected ':'");
      p_++;
      if (!Value(depth + 1)) return false;
      Space();
      if (p_ == end_) return Fail("unexpected end of text");
      if (*p_ == ',') {
        p_++;
        continue;
      }
      if (*p_ == '}') {
        p_++;
        doc_->nodes_[n].b = count;
        Close(n);
        return true;
      }
      return Fail("expected ',' or '}'");
    }
  }

  bool Array(int depth) {
    const uint32_t n = NewNode(JsonDoc::kArray);
    p_++;  // [
    Space();
    const size_t mark = stack_.size();
    if (p_ != end_ && *p_ == ']') {
      p_++;
    } else {
      for (;;) {
        stack_.push_back(static_cast<uint32_t>(doc_->nodes_.size()));
        if (!Value(depth + 1)) return false;
        Space();
        if (p_ == end_) return Fail("unexpected end of text");
        if (*p_ == ',') {
          p_++;
          continue;
        }
        if (*p_ == ']') {
          p_++;
          break;
        }
        return Fail("expected ',' or ']'");
      }
    }
    Node &node = doc_->nodes_[n];
    node.a = static_cast<uint32_t>(doc_->children_.size());
    node.b = static_cast<uint32_t>(stack_.size() - mark);
    doc_->children_.insert(doc_->children_.end(), stack_.begin() + mark, stack_.end());
    stack_.resize(mark);
    Close(n);
    return true;
  }

  bool Hex4(unsigned *out) {
    if (end_ - p_ < 4) return Fail("bad \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
      const char c = p_[i];
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= c - '0';
      else if (c >= 'a' && c <= 'f')
        v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        v |= c - 'A' + 10;
      else
        return Fail("bad \\u escape");
    }
    p_ += 4;
    *out = v;
    return true;
  }

  static void Utf8(unsigned cp, std::string *s) {
    if (cp < 0x80) {
      s->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s->push_back(static_cast<char>(0xc0 | (cp >> 6)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
      s->push_back(static_cast<char>(0xe0 | (cp >> 12)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else {
      s->push_back(static_cast<char>(0xf0 | (cp >> 18)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
  }

  // A string node (also a member name). Without escapes it points into the text; with escapes it
  // is decoded to UTF-8, a lone surrogate becoming U+FFFD as V8's Utf8Value does.
  bool String() {
    const uint32_t n = NewNode(JsonDoc::kString);
    p_++;  // "
    const char *start = p_;
    while (p_ != end_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20) p_++;
    if (p_ != end_ && *p_ == '"') {
      doc_->nodes_[n].a = static_cast<uint32_t>(start - begin_);
      doc_->nodes_[n].b = static_cast<uint32_t>(p_ - start);
      p_++;
      Close(n);
      return true;
    }
    std::string s(start, p_);
    for (;;) {
      const char *run = p_;
      while (p_ != end_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20) p_++;
      s.append(run, p_);
      if (p_ == end_) return Fail("unterminated string");
      const char c = *p_++;
      if (c == '"') break;
      if (c != '\\') return Fail("control character in a string");
      if (p_ == end_) return Fail("unterminated string");
      const char e = *p_++;
      switch (e) {
        case '"':
          s.push_back('"');
          break;
        case '\\':
          s.push_back('\\');
          break;
        case '/':
          s.push_back('/');
          break;
        case 'b':
          s.push_back('\b');
          break;
        case 'f':
          s.push_back('\f');
          break;
        case 'n':
          s.push_back('\n');
          break;
        case 'r':
          s.push_back('\r');
          break;
        case 't':
          s.push_back('\t');
          break;
        case 'u': {
          unsigned cp;
          if (!Hex4(&cp)) return false;
          if (cp >= 0xd800 && cp <= 0xdbff && end_ - p_ >= 6 && p_[0] == '\\' && p_[1] == 'u') {
            const char *save = p_;
            p_ += 2;
            unsigned lo;
            if (!Hex4(&lo)) return false;
            if (lo >= 0xdc00 && lo <= 0xdfff) {
              cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else {
              p_ = save;  // not a pair: the high half alone, then the next escape on its own
              cp = 0xfffd;
            }
          } else if (cp >= 0xd800 && cp <= 0xdfff) {
            cp = 0xfffd;
          }
          Utf8(cp, &s);
          break;
        }
        default:
          return Fail("bad escape in a string");
      }
    }
    doc_->nodes_[n].a = static_cast<uint32_t>(doc_->unescaped_.size());
    doc_->nodes_[n].b = static_cast<uint32_t>(s.size());
    doc_->nodes_[n].pooled = true;
    doc_->unescaped_ += s;
    Close(n);
    return true;
  }

  bool Number() {
    const char *start = p_;
    if (p_ != end_ && *p_ == '-') p_++;
    if (p_ == end_ || *p_ < '0' || *p_ > '9') return Fail("unexpected character");
    if (*p_ == '0')
      p_++;
    else
      while (p_ != end_ && *p_ >= '0' && *p_ <= '9') p_++;
    if (p_ != end_ && *p_ == '.') {
      p_++;
      if (p_ == end_ || *p_ < '0' || *p_ > '9') return Fail("bad number");
      while (p_ != end_ && *p_ >= '0' && *p_ <= '9') p_++;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      p_++;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) p_++;
      if (p_ == end_ || *p_ < '0' || *p_ > '9') return Fail("bad number");
      while (p_ != end_ && *p_ >= '0' && *p_ <= '9') p_++;
    }
    const uint32_t n = NewNode(JsonDoc::kNumber);
    doc_->nodes_[n].a = static_cast<uint32_t>(doc_->numbers_.size());
    doc_->numbers_.push_back(std::strtod(std::string(start, p_).c_str(), nullptr));
    Close(n);
    return true;
  }
};

bool JsonDoc::Parse(std::string text, std::string *error) {
  text_ = std::move(text);
  nodes_.clear();
  children_.clear();
  numbers_.clear();
  unescaped_.clear();
  return JsonParser(this).Parse(error);
}

}  // namespace iptlb
