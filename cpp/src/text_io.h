// Reading the shim's input files: raw text bytes and token-id lists.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shim {

// The whole file as bytes; a missing or unreadable input file is a usage error.
std::string read_input_file(const std::string & path, const std::string & what);

// Token ids from a JSON array ("[1, 2, 3]") or whitespace/comma separated integers.
// Anything else is a usage error naming the offending text.
std::vector<int32_t> parse_token_list(const std::string & text, const std::string & origin);

}  // namespace shim
