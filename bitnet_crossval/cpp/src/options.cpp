#include "options.h"

#include <cstdlib>

#include "errors.h"

namespace shim {

const std::set<std::string> kCommonOptions = {"log-file"};
const std::set<std::string> kCommonFlags = {"verbose"};

const std::string & Options::required(const std::string & name) const {
    const auto it = values_.find(name);
    if (it == values_.end()) {
        throw ShimError(kExitUsage, command_ + " needs --" + name);
    }
    return it->second;
}

std::string Options::optional(const std::string & name, const std::string & fallback) const {
    const auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
}

bool Options::flag01(const std::string & name) const {
    const std::string & v = required(name);
    if (v == "0") {
        return false;
    }
    if (v == "1") {
        return true;
    }
    throw ShimError(kExitUsage, "--" + name + " takes 0 or 1, not '" + v + "'");
}

long long Options::integer(const std::string & name, long long fallback, long long min, long long max) const {
    const auto it = values_.find(name);
    if (it == values_.end()) {
        return fallback;
    }
    const std::string & text = it->second;
    char * end = nullptr;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || v < min || v > max) {
        throw ShimError(kExitUsage, "--" + name + " takes an integer in [" + std::to_string(min) + ", " +
                                        std::to_string(max) + "], not '" + text + "'");
    }
    return v;
}

Options parse_options(const CommandSpec & spec, int argc, char ** argv) {
    const std::string command = spec.name;
    std::map<std::string, std::string> values;
    for (int i = 2; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg.rfind("--", 0) != 0 || arg.size() < 3) {
            throw ShimError(kExitUsage, "unexpected argument '" + arg + "'");
        }
        std::string name = arg.substr(2);
        std::string value;
        bool has_value = false;
        const size_t eq = name.find('=');
        if (eq != std::string::npos) {
            value = name.substr(eq + 1);
            name = name.substr(0, eq);
            has_value = true;
        }
        if (kCommonFlags.count(name) != 0) {
            if (has_value) {
                throw ShimError(kExitUsage, "--" + name + " takes no value");
            }
            value = "1";
        } else if (spec.options.count(name) != 0 || kCommonOptions.count(name) != 0) {
            if (!has_value) {
                if (i + 1 >= argc) {
                    throw ShimError(kExitUsage, "--" + name + " needs a value");
                }
                value = argv[++i];
            }
        } else {
            throw ShimError(kExitUsage, "unknown option --" + name + " for " + command);
        }
        if (!values.emplace(name, value).second) {
            throw ShimError(kExitUsage, "--" + name + " given twice");
        }
    }
    return Options(command, values);
}

}  // namespace shim
