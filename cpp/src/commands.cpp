#include "commands.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "build_info.h"
#include "errors.h"
#include "json_writer.h"
#include "model.h"
#include "npy.h"
#include "text_io.h"

namespace shim {

// ===== options =============================================================================

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

// ===== shared pieces =========================================================================

namespace {

// The reference configuration. Fixed and reported, so two runs are comparable and a
// report says exactly what the reference computed.
constexpr long long kDefaultThreads = 1;
constexpr long long kDefaultSeed = 42;

void print_json(const JsonWriter & json) {
    const std::string & text = json.str();
    if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fputc('\n', stdout) == EOF ||
        std::fflush(stdout) != 0) {
        throw ShimError(kExitOther, "cannot write to stdout");
    }
}

std::vector<int32_t> read_tokens(const Options & opts) {
    const bool from_file = opts.has("tokens-file");
    const bool inline_list = opts.has("tokens");
    if (from_file == inline_list) {
        throw ShimError(kExitUsage, opts.command() + " needs exactly one of --tokens-file or --tokens");
    }
    if (from_file) {
        const std::string & path = opts.required("tokens-file");
        return parse_token_list(read_input_file(path, "tokens file"), path);
    }
    return parse_token_list(opts.required("tokens"), "--tokens");
}

void check_token_ids(const std::vector<int32_t> & tokens, int32_t vocab_size) {
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= vocab_size) {
            throw ShimError(kExitUsage, "token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                            " is outside the vocabulary (n_vocab = " + std::to_string(vocab_size) +
                                            ")");
        }
    }
}

KvType parse_kv_type(const Options & opts) {
    const std::string v = opts.optional("kv-type", "f32");
    if (v == "f32") {
        return KvType::F32;
    }
    if (v == "f16") {
        return KvType::F16;
    }
    throw ShimError(kExitUsage, "--kv-type takes f32 or f16, not '" + v + "'");
}

void write_pieces(JsonWriter & json, const llama_model * model, const std::vector<int32_t> & tokens, bool special) {
    std::vector<std::string> pieces;
    pieces.reserve(tokens.size());
    for (const int32_t t : tokens) {
        pieces.push_back(token_piece(model, t, special));
    }
    json.key("pieces").string_array(pieces);  // best effort: partial UTF-8 shows as U+FFFD
    json.key("pieces_hex").begin_array();     // exact bytes
    for (const auto & p : pieces) {
        json.value(to_hex(p));
    }
    json.end_array();
}

void write_backend(JsonWriter & json) {
    json.key("api").value(BITNET_SHIM_API_NAME);
    json.key("backend").value(BITNET_SHIM_BACKEND);
    json.key("backend_commit").value(BITNET_SHIM_BACKEND_COMMIT);
}

struct RunConfig {
    int32_t threads;
    KvType kv_type;
    uint32_t seed;
};

RunConfig run_config(const Options & opts) {
    RunConfig config{};
    config.threads = static_cast<int32_t>(opts.integer("threads", kDefaultThreads, 1, 1024));
    config.kv_type = parse_kv_type(opts);
    config.seed = static_cast<uint32_t>(opts.integer("seed", kDefaultSeed, 0, 0xfffffffeLL));
    return config;
}

void write_run_config(JsonWriter & json, const RunConfig & config, const ContextReport & report) {
    json.key("kv_type").value(kv_type_name(config.kv_type));
    json.key("threads").value(config.threads);
    json.key("flash_attn").value(false);
    json.key("causal").value(true);
    json.key("gpu_layers").value(0);
    json.key("n_ctx").value(report.n_ctx);
    json.key("n_batch").value(report.n_batch);
    json.key("n_ubatch").value(report.n_ubatch);
    json.key("logits_all_param").value(report.logits_all);
    json.key("seed");
    if (report.seed_applied) {
        json.value(config.seed);
    } else {
        json.null();  // this API has no context RNG; greedy decoding needs none
    }
    write_backend(json);
}

// Argmax over finite values, lowest id on ties (numpy.argmax agrees on finite rows).
int32_t greedy_token(const float * row, int32_t n_vocab) {
    int32_t best = 0;
    float best_value = -std::numeric_limits<float>::infinity();
    bool found = false;
    for (int32_t v = 0; v < n_vocab; ++v) {
        if (std::isfinite(row[v]) && (!found || row[v] > best_value)) {
            best = v;
            best_value = row[v];
            found = true;
        }
    }
    return best;
}

int64_t count_nonfinite(const std::vector<float> & values) {
    int64_t n = 0;
    for (const float v : values) {
        n += std::isfinite(v) ? 0 : 1;
    }
    return n;
}

}  // namespace

// ===== info ==================================================================================

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
    json.key("build_flags").value(BITNET_SHIM_BUILD_FLAGS);
    json.key("lib_dir").value(BITNET_SHIM_LIB_DIR);
    json.key("llama_h").value(BITNET_SHIM_LLAMA_H);
    json.key("system_info").value(llama_print_system_info());

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

// ===== tokenize / detokenize ===================================================================

int run_tokenize(const Options & opts) {
    const std::string & path = opts.required("model");
    const std::string & text_file = opts.required("text-file");
    const bool add_bos = opts.flag01("add-bos");
    const bool parse_special = opts.flag01("parse-special");
    const std::string text = read_input_file(text_file, "text file");
    ModelPtr model = load_model(path, /*vocab_only=*/true);
    const std::vector<int32_t> tokens = tokenize(model.get(), text, add_bos, parse_special);

    JsonWriter json;
    json.begin_object();
    json.key("tokens").int_array(tokens);
    json.key("n_tokens").value(static_cast<int64_t>(tokens.size()));
    write_pieces(json, model.get(), tokens, /*special=*/true);
    json.key("add_bos").value(add_bos);
    json.key("parse_special").value(parse_special);
    json.key("text_bytes").value(static_cast<int64_t>(text.size()));
    write_backend(json);
    json.end_object();
    print_json(json);
    return kExitOk;
}

int run_detokenize(const Options & opts) {
    const std::string & path = opts.required("model");
    const bool remove_special = opts.flag01("remove-special");
    const bool unparse_special = opts.flag01("unparse-special");
    const std::vector<int32_t> tokens = read_tokens(opts);
    ModelPtr model = load_model(path, /*vocab_only=*/true);
    check_token_ids(tokens, n_vocab(model.get()));
    const std::string text = detokenize(model.get(), tokens, remove_special, unparse_special);

    JsonWriter json;
    json.begin_object();
    json.key("tokens").int_array(tokens);
    write_pieces(json, model.get(), tokens, unparse_special);
    json.key("text").value(text);
    json.key("text_hex").value(to_hex(text));
    json.key("remove_special").value(remove_special);
    json.key("unparse_special").value(unparse_special);
    write_backend(json);
    json.end_object();
    print_json(json);
    return kExitOk;
}

// ===== logits ================================================================================

int run_logits(const Options & opts) {
    const std::string & path = opts.required("model");
    const std::string & out = opts.required("out");
    const RunConfig config = run_config(opts);
    const std::vector<int32_t> tokens = read_tokens(opts);
    if (tokens.empty()) {
        throw ShimError(kExitUsage, "logits needs at least one token");
    }
    ModelPtr model = load_model(path, /*vocab_only=*/false);
    const int32_t vocab_size = n_vocab(model.get());
    check_token_ids(tokens, vocab_size);

    const auto n = static_cast<uint32_t>(tokens.size());
    ContextSettings settings;
    settings.n_ctx = n;
    settings.n_batch = n;
    settings.threads = config.threads;
    settings.kv_type = config.kv_type;
    settings.seed = config.seed;
    ContextReport report;
    ContextPtr ctx = new_context(model.get(), settings, report);
    if (report.n_ubatch < n) {
        throw ShimError(kExitDecode, "the context would split " + std::to_string(n) +
                                         " tokens into micro-batches of " + std::to_string(report.n_ubatch));
    }
    clear_memory(ctx.get());
    decode(ctx.get(), tokens, 0, /*all_logits=*/true);

    std::vector<float> logits(static_cast<size_t>(n) * static_cast<size_t>(vocab_size));
    for (uint32_t i = 0; i < n; ++i) {
        const float * row = logits_row(ctx.get(), static_cast<int32_t>(i));
        std::copy(row, row + vocab_size, logits.begin() + static_cast<std::ptrdiff_t>(i) * vocab_size);
    }
    write_npy_f32(out, logits.data(), n, static_cast<size_t>(vocab_size));

    JsonWriter json;
    json.begin_object();
    json.key("out").value(out);
    json.key("n_tokens").value(n);
    json.key("n_vocab").value(vocab_size);
    json.key("dtype").value("float32");
    json.key("n_decode_calls").value(1);
    json.key("n_nonfinite").value(count_nonfinite(logits));
    write_run_config(json, config, report);
    json.end_object();
    print_json(json);
    return kExitOk;
}

// ===== generate ================================================================================

int run_generate(const Options & opts) {
    const std::string & path = opts.required("model");
    const std::string & out = opts.required("out-logits");
    if (!opts.has("n")) {
        throw ShimError(kExitUsage, "generate needs --n");
    }
    const auto n_new = static_cast<uint32_t>(opts.integer("n", 1, 1, 1 << 20));
    const RunConfig config = run_config(opts);
    const std::vector<int32_t> prompt = read_tokens(opts);
    if (prompt.empty()) {
        throw ShimError(kExitUsage, "generate needs at least one prompt token");
    }
    ModelPtr model = load_model(path, /*vocab_only=*/false);
    const int32_t vocab_size = n_vocab(model.get());
    check_token_ids(prompt, vocab_size);

    const auto n_prompt = static_cast<uint32_t>(prompt.size());
    ContextSettings settings;
    settings.n_ctx = n_prompt + n_new;
    settings.n_batch = n_prompt;
    settings.threads = config.threads;
    settings.kv_type = config.kv_type;
    settings.seed = config.seed;
    ContextReport report;
    ContextPtr ctx = new_context(model.get(), settings, report);
    clear_memory(ctx.get());
    decode(ctx.get(), prompt, 0, /*all_logits=*/false);

    std::vector<int32_t> generated;
    std::vector<float> logits(static_cast<size_t>(n_new) * static_cast<size_t>(vocab_size));
    int32_t last_output = static_cast<int32_t>(n_prompt) - 1;  // batch index of the row to read
    for (uint32_t k = 0; k < n_new; ++k) {
        const float * row = logits_row(ctx.get(), last_output);
        std::copy(row, row + vocab_size, logits.begin() + static_cast<std::ptrdiff_t>(k) * vocab_size);
        const int32_t token = greedy_token(row, vocab_size);
        generated.push_back(token);
        if (k + 1 < n_new) {
            decode(ctx.get(), {token}, static_cast<int32_t>(n_prompt + k), /*all_logits=*/false);
            last_output = 0;
        }
    }
    write_npy_f32(out, logits.data(), n_new, static_cast<size_t>(vocab_size));

    JsonWriter json;
    json.begin_object();
    json.key("tokens").int_array(generated);
    json.key("n_generated").value(static_cast<int64_t>(generated.size()));
    json.key("n_prompt").value(n_prompt);
    write_pieces(json, model.get(), generated, /*special=*/true);
    json.key("eog").begin_array();
    for (const int32_t t : generated) {
        json.value(is_eog(model.get(), t));
    }
    json.end_array();
    json.key("out_logits").value(out);
    json.key("n_vocab").value(vocab_size);
    json.key("dtype").value("float32");
    json.key("sampling").value("greedy");
    json.key("n_nonfinite").value(count_nonfinite(logits));
    write_run_config(json, config, report);
    json.end_object();
    print_json(json);
    return kExitOk;
}

}  // namespace shim
