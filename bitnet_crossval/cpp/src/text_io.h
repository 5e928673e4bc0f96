// Parsing the shim's text inputs: token-id lists (files are read by files.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shim {

// Token ids from a JSON array ("[1, 2, 3]") or whitespace/comma separated integers.
// Anything else is a usage error naming the offending text.
std::vector<int32_t> parse_token_list(const std::string & text, const std::string & origin);

}  // namespace shim
