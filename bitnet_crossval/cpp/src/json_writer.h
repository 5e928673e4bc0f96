// A minimal streaming JSON writer: enough for the shim's flat documents, always valid
// UTF-8 output even when a token piece is a fragment of a multi-byte character.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shim {

class JsonWriter {
public:
    JsonWriter & begin_object();
    JsonWriter & end_object();
    JsonWriter & begin_array();
    JsonWriter & end_array();
    JsonWriter & key(const std::string & name);
    JsonWriter & value(const std::string & text);  // invalid UTF-8 becomes U+FFFD
    JsonWriter & value(const char * text);
    JsonWriter & value(bool flag);
    JsonWriter & value(int64_t number);
    JsonWriter & value(int number) { return value(static_cast<int64_t>(number)); }
    JsonWriter & value(uint32_t number) { return value(static_cast<int64_t>(number)); }
    JsonWriter & value(uint64_t number);
    JsonWriter & value(double number);  // non-finite numbers become null
    JsonWriter & null();
    JsonWriter & int_array(const std::vector<int32_t> & numbers);
    JsonWriter & string_array(const std::vector<std::string> & texts);

    const std::string & str() const { return out_; }

private:
    void separator();
    std::string out_;
    std::vector<bool> first_;  // per open container: no element written yet
    bool after_key_ = false;
};

// The bytes as valid UTF-8: every ill-formed sequence is replaced by U+FFFD.
std::string sanitize_utf8(const std::string & bytes);

// Lower-case hexadecimal of the bytes ("" for an empty string).
std::string to_hex(const std::string & bytes);

}  // namespace shim
