// `info`: build facts, plus model facts with --model.
#include <cstdlib>

#include "build_info.h"
#include "commands.h"
#include "errors.h"
#include "json_writer.h"
#include "model.h"
#include "run_common.h"

namespace shim {

namespace {

int run_info(const Options & opts) {
    JsonWriter json;
    json.begin_object();
    json.key("shim_version").value(BITNET_SHIM_VERSION);
    write_backend(json);
    const ApiFeatures features = api_features();
    json.key("api_features").begin_object();
    json.key("flash_attn_control").value(features.flash_attn_control);
    json.key("memory_clear").value(features.memory_clear);
    json.key("logits_all_param").value(features.logits_all_param);
    json.key("context_seed_param").value(features.context_seed_param);
    json.end_object();
    json.key("trace_supported").value(eval_callback_supported());
    json.key("quantize_types").string_array(quantize_type_names());
    json.key("build_flags").value(BITNET_SHIM_BUILD_FLAGS);
    json.key("lib_dir").value(BITNET_SHIM_LIB_DIR);
    json.key("llama_h").value(BITNET_SHIM_LLAMA_H);
    json.key("system_info").value(system_info());

    if (opts.has("model")) {
        const bool weights = opts.has("weights") && opts.flag01("weights");
        const std::string & path = opts.required("model");
        ModelPtr model = load_model(path, !weights);
        const ModelFacts facts = model_facts(model.get());
        json.key("model").value(path);
        json.key("weights_loaded").value(weights);
        json.key("architecture").value(facts.architecture);
        json.key("name").value(facts.name);
        json.key("vocab_size").value(facts.n_vocab);
        json.key("vocab_type").value(facts.vocab_type);
        json.key("context_length").value(facts.n_ctx_train);
        json.key("n_layer").value(facts.n_layer);
        json.key("n_embd").value(facts.n_embd);
        const std::string heads = meta_string(model.get(), facts.architecture + ".attention.head_count");
        const std::string heads_kv = meta_string(model.get(), facts.architecture + ".attention.head_count_kv");
        json.key("n_head");
        heads.empty() ? json.null() : json.value(static_cast<int64_t>(std::atoll(heads.c_str())));
        json.key("n_head_kv");
        heads_kv.empty() ? json.null() : json.value(static_cast<int64_t>(std::atoll(heads_kv.c_str())));
        json.key("bos").value(facts.bos);
        json.key("eos").value(facts.eos);
        json.key("add_bos").value(facts.add_bos);
        if (weights) {
            json.key("description").value(describe(model.get()));
            json.key("n_params").value(static_cast<int64_t>(n_params(model.get())));
            json.key("size_bytes").value(static_cast<int64_t>(size_bytes(model.get())));
        }
    }
    json.end_object();
    print_json(json);
    return kExitOk;
}

}  // namespace

const CommandSpec kInfoCommand = {
    "info",
    "  info       [--model M [--weights 0|1]]\n",
    {"model", "weights"},
    run_info,
};

}  // namespace shim
