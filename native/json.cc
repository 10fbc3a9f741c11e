#include "json.h"

#include <cstdlib>
#include <cstring>

namespace iptlb {

const Json *Json::Find(const char *key) const {
  for (auto it = members.rbegin(); it != members.rend(); ++it) {
    if (it->first == key) return &it->second;
  }
  return nullptr;
}

namespace {

class Parser {
 public:
  explicit Parser(const std::string &text) : p_(text.data()), begin_(text.data()), end_(text.data() + text.size()) {}

  bool Parse(Json *out, std::string *error) {
    if (!Value(out, 0)) {
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
  const char *p_;
  const char *begin_;
  const char *end_;
  std::string why_;

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

  bool Value(Json *out, int depth) {
    if (depth > kMaxJsonDepth) return Fail("nested too deeply");
    Space();
    if (p_ == end_) return Fail("unexpected end of text");
    switch (*p_) {
      case '{': return Object(out, depth);
      case '[': return Array(out, depth);
      case '"': out->type = Json::kString; return String(&out->string);
      case 't': out->type = Json::kBool; out->boolean = true; return Literal("true");
      case 'f': out->type = Json::kBool; out->boolean = false; return Literal("false");
      case 'n': out->type = Json::kNull; return Literal("null");
      default: return Number(out);
    }
  }

  bool Object(Json *out, int depth) {
    out->type = Json::kObject;
    p_++;  // {
    Space();
    if (p_ != end_ && *p_ == '}') {
      p_++;
      return true;
    }
    for (;;) {
      Space();
      if (p_ == end_ || *p_ != '"') return Fail("expected a member name");
      out->members.emplace_back();
      auto &m = out->members.back();
      if (!String(&m.first)) return false;
      Space();
      if (p_ == end_ || *p_ != ':') return Fail("expected ':'");
      p_++;
      if (!Value(&m.second, depth + 1)) return false;
      Space();
      if (p_ == end_) return Fail("unexpected end of text");
      if (*p_ == ',') {
        p_++;
        continue;
      }
      if (*p_ == '}') {
        p_++;
        return true;
      }
      return Fail("expected ',' or '}'");
    }
  }

  bool Array(Json *out, int depth) {
    out->type = Json::kArray;
    p_++;  // [
    Space();
    if (p_ != end_ && *p_ == ']') {
      p_++;
      return true;
    }
    for (;;) {
      out->items.emplace_back();
      if (!Value(&out->items.back(), depth + 1)) return false;
      Space();
      if (p_ == end_) return Fail("unexpected end of text");
      if (*p_ == ',') {
        p_++;
        continue;
      }
      if (*p_ == ']') {
        p_++;
        return true;
      }
      return Fail("expected ',' or ']'");
    }
  }

  bool Hex4(unsigned *out) {
    if (end_ - p_ < 4) return Fail("bad \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
      const char c = p_[i];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else return Fail("bad \\u escape");
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

  // A string; escapes decoded to UTF-8. A lone surrogate becomes U+FFFD, as V8's Utf8Value does.
  bool String(std::string *s) {
    p_++;  // "
    for (;;) {
      const char *run = p_;
      while (p_ != end_ && *p_ != '"' && *p_ != '\\' && static_cast<unsigned char>(*p_) >= 0x20) p_++;
      s->append(run, p_);
      if (p_ == end_) return Fail("unterminated string");
      const char c = *p_++;
      if (c == '"') return true;
      if (c != '\\') return Fail("control character in a string");
      if (p_ == end_) return Fail("unterminated string");
      const char e = *p_++;
      switch (e) {
        case '"': s->push_back('"'); break;
        case '\\': s->push_back('\\'); break;
        case '/': s->push_back('/'); break;
        case 'b': s->push_back('\b'); break;
        case 'f': s->push_back('\f'); break;
        case 'n': s->push_back('\n'); break;
        case 'r': s->push_back('\r'); break;
        case 't': s->push_back('\t'); break;
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
          Utf8(cp, s);
          break;
        }
        default:
          return Fail("bad escape in a string");
      }
    }
  }

  bool Number(Json *out) {
    const char *start = p_;
    if (p_ != end_ && *p_ == '-') p_++;
    if (p_ == end_ || *p_ < '0' || *p_ > '9') return Fail("unexpected character");
    if (*p_ == '0') p_++;
    else while (p_ != end_ && *p_ >= '0' && *p_ <= '9') p_++;
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
    const std::string text(start, p_);
    out->type = Json::kNumber;
    out->number = std::strtod(text.c_str(), nullptr);
    return true;
  }
};

}  // namespace

bool ParseJson(const std::string &text, Json *out, std::string *error) {
  *out = Json();
  return Parser(text).Parse(out, error);
}

}  // namespace iptlb
