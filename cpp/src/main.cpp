// bitnet-shim: evaluate a GGUF model with the llama.cpp (or bitnet.cpp) it was built
// against, deterministically, and hand the numbers to the Python suite as JSON and .npy.
// Protocol: docs/reference/shim.md.
#include <cstdio>
#include <exception>
#include <map>
#include <new>
#include <set>
#include <string>

#include "commands.h"
#include "errors.h"
#include "llama.h"
#include "model.h"

namespace {

const char * const kUsage =
    "usage: bitnet-shim <command> [options]\n"
    "\n"
    "commands:\n"
    "  info       [--model M [--weights 0|1]]\n"
    "  tokenize   --model M --text-file F --add-bos 0|1 --parse-special 0|1\n"
    "  detokenize --model M (--tokens-file F | --tokens LIST) --remove-special 0|1 --unparse-special 0|1\n"
    "  logits     --model M (--tokens-file F | --tokens LIST) --out X.npy [--threads N] [--kv-type f32|f16]\n"
    "             [--seed S]\n"
    "  generate   --model M (--tokens-file F | --tokens LIST) --n N --out-logits X.npy [--threads N]\n"
    "             [--kv-type f32|f16] [--seed S]\n"
    "\n"
    "every command also takes --verbose (llama.cpp logs on stderr) and --log-file PATH.\n"
    "exit codes: 0 ok, 1 other, 2 usage, 3 model missing/corrupt, 4 unsupported model, 5 decode failed\n";

const std::map<std::string, std::set<std::string>> kCommandOptions = {
    {"info", {"model", "weights"}},
    {"tokenize", {"model", "text-file", "add-bos", "parse-special"}},
    {"detokenize", {"model", "tokens-file", "tokens", "remove-special", "unparse-special"}},
    {"logits", {"model", "tokens-file", "tokens", "out", "threads", "kv-type", "seed"}},
    {"generate", {"model", "tokens-file", "tokens", "n", "out-logits", "threads", "kv-type", "seed"}},
};
const std::set<std::string> kCommonOptions = {"log-file"};
const std::set<std::string> kCommonFlags = {"verbose"};

shim::Options parse(int argc, char ** argv) {
    if (argc < 2) {
        throw shim::ShimError(shim::kExitUsage, "no command given; run `bitnet-shim --help`");
    }
    const std::string command = argv[1];
    const auto allowed = kCommandOptions.find(command);
    if (allowed == kCommandOptions.end()) {
        throw shim::ShimError(shim::kExitUsage, "unknown command '" + command + "'; run `bitnet-shim --help`");
    }
    std::map<std::string, std::string> values;
    for (int i = 2; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg.rfind("--", 0) != 0 || arg.size() < 3) {
            throw shim::ShimError(shim::kExitUsage, "unexpected argument '" + arg + "'");
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
                throw shim::ShimError(shim::kExitUsage, "--" + name + " takes no value");
            }
            value = "1";
        } else if (allowed->second.count(name) != 0 || kCommonOptions.count(name) != 0) {
            if (!has_value) {
                if (i + 1 >= argc) {
                    throw shim::ShimError(shim::kExitUsage, "--" + name + " needs a value");
                }
                value = argv[++i];
            }
        } else {
            throw shim::ShimError(shim::kExitUsage, "unknown option --" + name + " for " + command);
        }
        if (!values.emplace(name, value).second) {
            throw shim::ShimError(shim::kExitUsage, "--" + name + " given twice");
        }
    }
    return shim::Options(command, values);
}

int dispatch(const shim::Options & opts) {
    const std::string & c = opts.command();
    if (c == "info") {
        return shim::run_info(opts);
    }
    if (c == "tokenize") {
        return shim::run_tokenize(opts);
    }
    if (c == "detokenize") {
        return shim::run_detokenize(opts);
    }
    if (c == "logits") {
        return shim::run_logits(opts);
    }
    return shim::run_generate(opts);
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
            std::fputs(kUsage, stdout);
            return shim::kExitOk;
        }
    }
    shim::Diagnostics & diagnostics = shim::Diagnostics::instance();
    try {
        const shim::Options opts = parse(argc, argv);
        diagnostics.start(opts.has("verbose"), opts.optional("log-file", ""));
        llama_backend_init();
        const int rc = dispatch(opts);
        llama_backend_free();
        return rc;
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
