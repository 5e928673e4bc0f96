#include "json_writer.h"

#include <cmath>
#include <cstdio>

namespace shim {

void JsonWriter::separator() {
    if (after_key_) {
        after_key_ = false;
        return;
    }
    if (!first_.empty()) {
        if (!first_.back()) {
            out_ += ',';
        }
        first_.back() = false;
    }
}

JsonWriter & JsonWriter::begin_object() {
    separator();
    out_ += '{';
    first_.push_back(true);
    return *this;
}

JsonWriter & JsonWriter::end_object() {
    out_ += '}';
    first_.pop_back();
    return *this;
}

JsonWriter & JsonWriter::begin_array() {
    separator();
    out_ += '[';
    first_.push_back(true);
    return *this;
}

JsonWriter & JsonWriter::end_array() {
    out_ += ']';
    first_.pop_back();
    return *this;
}

JsonWriter & JsonWriter::key(const std::string & name) {
    value(name);
    out_ += ':';
    after_key_ = true;
    return *this;
}

JsonWriter & JsonWriter::value(const std::string & text) {
    separator();
    const std::string clean = sanitize_utf8(text);
    out_ += '"';
    for (const char c : clean) {
        const auto byte = static_cast<unsigned char>(c);
        switch (c) {
            case '"': out_ += "\\\""; break;
            case '\\': out_ += "\\\\"; break;
            case '\n': out_ += "\\n"; break;
            case '\r': out_ += "\\r"; break;
            case '\t': out_ += "\\t"; break;
            case '\b': out_ += "\\b"; break;
            case '\f': out_ += "\\f"; break;
            default:
                if (byte < 0x20 || byte == 0x7f) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", byte);
                    out_ += buf;
                } else {
                    out_ += c;
                }
        }
    }
    out_ += '"';
    return *this;
}

JsonWriter & JsonWriter::value(const char * text) { return value(std::string(text ? text : "")); }

JsonWriter & JsonWriter::value(bool flag) {
    separator();
    out_ += flag ? "true" : "false";
    return *this;
}

JsonWriter & JsonWriter::value(int64_t number) {
    separator();
    out_ += std::to_string(number);
    return *this;
}

JsonWriter & JsonWriter::value(uint64_t number) {
    separator();
    out_ += std::to_string(number);
    return *this;
}

JsonWriter & JsonWriter::value(double number) {
    if (!std::isfinite(number)) {
        return null();
    }
    separator();
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", number);
    out_ += buf;
    return *this;
}

JsonWriter & JsonWriter::null() {
    separator();
    out_ += "null";
    return *this;
}

JsonWriter & JsonWriter::int_array(const std::vector<int32_t> & numbers) {
    begin_array();
    for (const int32_t n : numbers) {
        value(static_cast<int64_t>(n));
    }
    return end_array();
}

JsonWriter & JsonWriter::string_array(const std::vector<std::string> & texts) {
    begin_array();
    for (const auto & t : texts) {
        value(t);
    }
    return end_array();
}

namespace {

// Length of the well-formed UTF-8 sequence starting at s[i] (Unicode 15, table 3-7), or 0.
size_t utf8_sequence_length(const std::string & s, size_t i) {
    const auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char b0 = at(i);
    const size_t left = s.size() - i;
    if (b0 < 0x80) {
        return 1;
    }
    const auto cont = [&](size_t k, unsigned char lo, unsigned char hi) {
        return k < s.size() && at(k) >= lo && at(k) <= hi;
    };
    if (b0 >= 0xc2 && b0 <= 0xdf) {
        return left >= 2 && cont(i + 1, 0x80, 0xbf) ? 2 : 0;
    }
    if (b0 >= 0xe0 && b0 <= 0xef) {
        const unsigned char lo = b0 == 0xe0 ? 0xa0 : 0x80;
        const unsigned char hi = b0 == 0xed ? 0x9f : 0xbf;
        return left >= 3 && cont(i + 1, lo, hi) && cont(i + 2, 0x80, 0xbf) ? 3 : 0;
    }
    if (b0 >= 0xf0 && b0 <= 0xf4) {
        const unsigned char lo = b0 == 0xf0 ? 0x90 : 0x80;
        const unsigned char hi = b0 == 0xf4 ? 0x8f : 0xbf;
        return left >= 4 && cont(i + 1, lo, hi) && cont(i + 2, 0x80, 0xbf) && cont(i + 3, 0x80, 0xbf) ? 4 : 0;
    }
    return 0;
}

}  // namespace

std::string sanitize_utf8(const std::string & bytes) {
    std::string out;
    out.reserve(bytes.size());
    size_t i = 0;
    while (i < bytes.size()) {
        const size_t n = utf8_sequence_length(bytes, i);
        if (n == 0) {
            out += "\xef\xbf\xbd";  // U+FFFD REPLACEMENT CHARACTER
            ++i;
        } else {
            out.append(bytes, i, n);
            i += n;
        }
    }
    return out;
}

std::string to_hex(const std::string & bytes) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (const char c : bytes) {
        const auto b = static_cast<unsigned char>(c);
        out += digits[b >> 4];
        out += digits[b & 0x0f];
    }
    return out;
}

}  // namespace shim
