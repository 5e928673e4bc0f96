// The subcommands of bitnet-shim. Each reads its inputs from the parsed options and prints
// one JSON document on stdout; arrays go to .npy files named by the caller.
#pragma once

#include <map>
#include <string>

namespace shim {

class Options {
public:
    Options(std::string command, std::map<std::string, std::string> values)
        : command_(std::move(command)), values_(std::move(values)) {}

    const std::string & command() const { return command_; }
    bool has(const std::string & name) const { return values_.count(name) != 0; }
    // A required option; its absence is a usage error.
    const std::string & required(const std::string & name) const;
    std::string optional(const std::string & name, const std::string & fallback) const;
    // "0" or "1"; anything else is a usage error.
    bool flag01(const std::string & name) const;
    long long integer(const std::string & name, long long fallback, long long min, long long max) const;

private:
    std::string command_;
    std::map<std::string, std::string> values_;
};

int run_info(const Options & opts);
int run_tokenize(const Options & opts);
int run_detokenize(const Options & opts);
int run_logits(const Options & opts);
int run_generate(const Options & opts);

}  // namespace shim
