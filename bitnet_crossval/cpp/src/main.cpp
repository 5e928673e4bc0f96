// bitnet-shim: evaluate a GGUF model with the llama.cpp (or bitnet.cpp) it was built
// against, deterministically, and hand the numbers to the Python suite as JSON and .npy.
// Protocol: docs/reference/shim.md.
#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "commands.h"
#include "diagnostics.h"
#include "errors.h"
#include "model.h"
#include "options.h"

namespace {

const shim::CommandSpec * const kCommands[] = {
    &shim::kInfoCommand,  &shim::kTokenizeCommand, &shim::kDetokenizeCommand, &shim::kLogitsCommand,
    &shim::kGenerateCommand, &shim::kTraceCommand, &shim::kQuantizeCommand,
};

std::string usage() {
    std::string text = "usage: bitnet-shim <command> [options]\n\ncommands:\n";
    for (const shim::CommandSpec * c : kCommands) {
        text += c->usage;
    }
    text +=
        "\n"
        "every command also takes --verbose (llama.cpp logs on stderr) and --log-file PATH.\n"
        "exit codes: 0 ok, 1 other, 2 usage, 3 model missing/corrupt, 4 unsupported model, 5 decode failed\n";
    return text;
}

const shim::CommandSpec & find_command(int argc, char ** argv) {
    if (argc < 2) {
        throw shim::ShimError(shim::kExitUsage, "no command given; run `bitnet-shim --help`");
    }
    const std::string name = argv[1];
    for (const shim::CommandSpec * c : kCommands) {
        if (name == c->name) {
            return *c;
        }
    }
    throw shim::ShimError(shim::kExitUsage, "unknown command '" + name + "'; run `bitnet-shim --help`");
}

std::string one_line(std::string text) {
    for (char & ch : text) {
        if (ch == '\n' || ch == '\r') {
            ch = ' ';
        }
    }
    return text;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc >= 2) {
        const std::string first = argv[1];
        if (first == "--help" || first == "-h" || first == "help") {
            std::fputs(usage().c_str(), stdout);
            return shim::kExitOk;
        }
    }
    shim::Diagnostics & diagnostics = shim::Diagnostics::instance();
    try {
        const shim::CommandSpec & command = find_command(argc, argv);
        const shim::Options opts = shim::parse_options(command, argc, argv);
        diagnostics.start(opts.has("verbose"), opts.optional("log-file", ""));
        shim::capture_llama_log(diagnostics);
        const shim::BackendScope backend;
        return command.run(opts);
    } catch (const shim::ShimError & e) {
        diagnostics.report("bitnet-shim: error: " + one_line(e.what()));
        return e.code();
    } catch (const std::bad_alloc &) {
        diagnostics.report("bitnet-shim: error: out of memory");
        return shim::kExitOther;
    } catch (const std::exception & e) {
        diagnostics.report(std::string("bitnet-shim: error: ") + one_line(e.what()));
        return shim::kExitOther;
    }
}
