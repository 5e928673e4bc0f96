// `quantize`: llama.cpp's own quantiser (llama_model_quantize), so tests can make K-quant
// fixtures the way users make them, and the float copy of a quantised model is dequantised by
// the backend's own code (--type F32|F16|BF16 --allow-requantize 1). The output is written
// under a temporary name and renamed.
#include <filesystem>
#include <system_error>

#include "commands.h"
#include "errors.h"
#include "files.h"
#include "json_writer.h"
#include "model.h"
#include "run_common.h"

namespace shim {

namespace {

int64_t file_size(const std::string & path) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    return ec ? -1 : static_cast<int64_t>(size);
}

std::string joined(const std::vector<std::string> & names) {
    std::string out;
    for (const auto & n : names) {
        out += (out.empty() ? "" : ", ") + n;
    }
    return out;
}

int run_quantize(const Options & opts) {
    const std::string & in = opts.required("model");
    const std::string & out = opts.required("out");
    const std::string & type = opts.required("type");
    const auto threads = static_cast<int32_t>(opts.integer("threads", kDefaultThreads, 1, 1024));
    // llama.cpp refuses to read quantised tensors unless told to: "requantizing" is how it
    // names dequantising them on the way to any other type, floats included.
    const bool allow_requantize = opts.has("allow-requantize") && opts.flag01("allow-requantize");
    const std::vector<std::string> types = quantize_type_names();
    if (types.empty()) {
        throw ShimError(kExitUsage, "this backend's llama.h declares no llama_model_quantize, so it cannot quantize");
    }
    bool known = false;
    for (const auto & t : types) {
        known = known || t == type;
    }
    if (!known) {
        throw ShimError(kExitUsage, "--type " + type + " is not a quantization type of this backend (" + joined(types) +
                                        ")");
    }
    check_output_target(out, "--out");
    check_model_file(in);

    PendingFile target(out, "--out");
    target.close();  // llama.cpp opens and writes the temporary itself
    quantize_model(in, target.temp_path(), type, threads, allow_requantize);
    target.commit();

    JsonWriter json;
    json.begin_object();
    json.key("model").value(in);
    json.key("out").value(out);
    json.key("type").value(type);
    json.key("threads").value(threads);
    json.key("allow_requantize").value(allow_requantize);
    json.key("size_bytes_in").value(file_size(in));
    json.key("size_bytes_out").value(file_size(out));
    write_backend(json);
    json.end_object();
    print_json(json);
    return kExitOk;
}

}  // namespace

const CommandSpec kQuantizeCommand = {
    "quantize",
    "  quantize   --model IN.gguf --out OUT.gguf --type Q4_K_M|Q5_K_M|Q6_K|Q8_0|F32|... [--threads N]\n"
    "             [--allow-requantize 0|1]\n",
    {"model", "out", "type", "threads", "allow-requantize"},
    run_quantize,
};

}  // namespace shim
