// The subcommands of bitnet-shim. Each one, in its own cmd_*.cpp, reads its inputs from its
// options, prints one JSON document on stdout and writes arrays to .npy files named by the
// caller; its CommandSpec (name, --help lines, option table) sits next to its implementation.
#pragma once

#include "options.h"

namespace shim {

extern const CommandSpec kInfoCommand;        // cmd_info.cpp
extern const CommandSpec kTokenizeCommand;    // cmd_tokenize.cpp
extern const CommandSpec kDetokenizeCommand;  // cmd_tokenize.cpp
extern const CommandSpec kLogitsCommand;      // cmd_logits.cpp
extern const CommandSpec kGenerateCommand;    // cmd_logits.cpp
extern const CommandSpec kTraceCommand;       // cmd_trace.cpp
extern const CommandSpec kQuantizeCommand;    // cmd_quantize.cpp

}  // namespace shim
