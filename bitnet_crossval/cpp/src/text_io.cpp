#include "text_io.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "errors.h"

namespace shim {

std::vector<int32_t> parse_token_list(const std::string & text, const std::string & origin) {
    std::string cleaned = text;
    // One optional pair of brackets around the whole list.
    const size_t open = cleaned.find_first_not_of(" \t\r\n");
    if (open != std::string::npos && cleaned[open] == '[') {
        const size_t close = cleaned.find_last_not_of(" \t\r\n");
        if (cleaned[close] != ']') {
            throw ShimError(kExitUsage, origin + ": a JSON array must end with ']'");
        }
        cleaned[open] = ' ';
        cleaned[close] = ' ';
    }
    for (char & c : cleaned) {
        if (c == ',') {
            c = ' ';
        }
    }
    std::vector<int32_t> tokens;
    const char * p = cleaned.c_str();
    while (true) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
            ++p;
        }
        if (*p == '\0') {
            break;
        }
        char * end = nullptr;
        errno = 0;
        const long long v = std::strtoll(p, &end, 10);
        const bool delimited = end != p && (*end == '\0' || *end == ' ' || *end == '\t' || *end == '\r' || *end == '\n');
        if (!delimited || errno == ERANGE || v < std::numeric_limits<int32_t>::min() ||
            v > std::numeric_limits<int32_t>::max()) {
            std::string bad(p, std::strcspn(p, " \t\r\n"));
            if (bad.size() > 40) {
                bad = bad.substr(0, 40) + "...";
            }
            throw ShimError(kExitUsage, origin + ": '" + bad + "' is not a token id");
        }
        tokens.push_back(static_cast<int32_t>(v));
        p = end;
    }
    return tokens;
}

}  // namespace shim
