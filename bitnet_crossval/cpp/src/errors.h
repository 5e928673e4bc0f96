// Exit codes of bitnet-shim and the one exception type that carries them to main().
// The codes are a protocol with tasks/shim.py; docs/reference/shim.md lists them.
#pragma once

#include <stdexcept>
#include <string>

namespace shim {

enum ExitCode : int {
    kExitOk = 0,
    kExitOther = 1,        // anything unexpected (I/O on output files, allocation, ...)
    kExitUsage = 2,        // bad arguments or input files (tokens, text)
    kExitModel = 3,        // model missing, unreadable, not GGUF, or rejected as corrupt
    kExitUnsupported = 4,  // architecture or tensor type this backend does not know
    kExitDecode = 5,       // context creation or llama_decode failed
};

class ShimError : public std::runtime_error {
public:
    ShimError(ExitCode code, const std::string & message) : std::runtime_error(message), code_(code) {}
    ExitCode code() const { return code_; }

private:
    ExitCode code_;
};

}  // namespace shim
