// Command-line parsing shared by every subcommand. Each command declares its own option table
// (a CommandSpec next to its implementation); main() looks the command up and parses against it.
#pragma once

#include <map>
#include <set>
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

// One subcommand: its name, its --help lines, the options it takes (each with a value) and
// the function that runs it. Every command also takes the common options below.
struct CommandSpec {
    const char * name;
    const char * usage;
    std::set<std::string> options;
    int (*run)(const Options & opts);
};

// Options every command takes: --log-file PATH, and the flag --verbose (no value).
extern const std::set<std::string> kCommonOptions;
extern const std::set<std::string> kCommonFlags;

// Parses argv[2..] for the given command. Unknown, repeated or value-less options are usage
// errors (ShimError with kExitUsage).
Options parse_options(const CommandSpec & spec, int argc, char ** argv);

}  // namespace shim
