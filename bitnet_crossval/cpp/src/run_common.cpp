#include "run_common.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <limits>

#include "build_info.h"
#include "errors.h"
#include "files.h"
#include "text_io.h"

namespace shim {

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

void write_backend(JsonWriter & json) {
    json.key("api").value(BITNET_SHIM_API_NAME);
    json.key("backend").value(BITNET_SHIM_BACKEND);
    json.key("backend_commit").value(BITNET_SHIM_BACKEND_COMMIT);
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

const char * kv_request_name(KvRequest request) {
    switch (request) {
        case KvRequest::Auto: return "auto";
        case KvRequest::F32: return "f32";
        default: return "f16";
    }
}

RunConfig run_config(const Options & opts) {
    RunConfig config;
    config.threads = static_cast<int32_t>(opts.integer("threads", kDefaultThreads, 1, 1024));
    const std::string kv = opts.optional("kv-type", "auto");
    if (kv == "auto") {
        config.kv = KvRequest::Auto;
    } else if (kv == "f32") {
        config.kv = KvRequest::F32;
    } else if (kv == "f16") {
        config.kv = KvRequest::F16;
    } else {
        throw ShimError(kExitUsage, "--kv-type takes auto, f32 or f16, not '" + kv + "'");
    }
    config.seed = static_cast<uint32_t>(opts.integer("seed", kDefaultSeed, 0, 0xfffffffeLL));
    return config;
}

namespace {

std::string kv_label(const KvTypes & kv) {
    return std::string(kv_type_name(kv.k)) + " K / " + kv_type_name(kv.v) + " V";
}

}  // namespace

OpenedContext open_context(llama_model * model, ContextSettings settings, KvRequest request) {
    std::vector<KvTypes> candidates;
    switch (request) {
        case KvRequest::F32: candidates = {{KvType::F32, KvType::F32}}; break;
        case KvRequest::F16: candidates = {{KvType::F16, KvType::F16}}; break;
        case KvRequest::Auto:
            // F32 first: what a float reference matches. The 2024 fork refuses any V cache but
            // F16 without flash attention ("V cache quantization requires flash_attn").
            candidates = {{KvType::F32, KvType::F32}, {KvType::F32, KvType::F16}, {KvType::F16, KvType::F16}};
            break;
    }
    std::string refusals;  // "<K/V> refused: <llama.cpp's reason>; ..."
    std::string last_reason;
    for (const KvTypes & kv : candidates) {
        settings.kv = kv;
        OpenedContext opened;
        opened.ctx = try_new_context(model, settings, opened.report, last_reason);
        if (opened.ctx) {
            opened.kv = kv;
            opened.fallback = refusals;
            return opened;
        }
        refusals += (refusals.empty() ? "" : "; ") + kv_label(kv) + " refused: " + last_reason;
    }
    if (candidates.size() == 1) {
        throw ShimError(kExitDecode, "llama.cpp could not create a context with an " + kv_label(candidates[0]) +
                                         " cache: " + last_reason);
    }
    throw ShimError(kExitDecode, "llama.cpp could not create a context with any KV cache type (" + refusals + ")");
}

void write_run_config(JsonWriter & json, const RunConfig & config, const OpenedContext & context) {
    const bool same = context.kv.k == context.kv.v;
    json.key("kv_type").value(same ? kv_type_name(context.kv.k) : "mixed");
    json.key("kv_type_requested").value(kv_request_name(config.kv));
    json.key("kv_type_k").value(kv_type_name(context.kv.k));
    json.key("kv_type_v").value(kv_type_name(context.kv.v));
    json.key("kv_fallback");
    context.fallback.empty() ? json.null() : json.value(context.fallback);
    json.key("threads").value(config.threads);
    json.key("flash_attn").value(false);
    json.key("causal").value(true);
    json.key("gpu_layers").value(0);
    json.key("n_ctx").value(context.report.n_ctx);
    json.key("n_batch").value(context.report.n_batch);
    json.key("n_ubatch").value(context.report.n_ubatch);
    json.key("logits_all_param").value(context.report.logits_all);
    json.key("seed");
    if (context.report.seed_applied) {
        json.value(config.seed);
    } else {
        json.null();  // this API has no context RNG; greedy decoding needs none
    }
    write_backend(json);
}

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

}  // namespace shim

namespace shim {

std::vector<float> read_logits(llama_context * ctx, uint32_t n, int32_t vocab_size) {
    std::vector<float> logits(static_cast<size_t>(n) * static_cast<size_t>(vocab_size));
    for (uint32_t i = 0; i < n; ++i) {
        const float * row = logits_row(ctx, static_cast<int32_t>(i));
        std::copy(row, row + vocab_size, logits.begin() + static_cast<std::ptrdiff_t>(i) * vocab_size);
    }
    return logits;
}

ContextSettings single_batch_settings(uint32_t n, const RunConfig & config) {
    ContextSettings settings;
    settings.n_ctx = n;
    settings.n_batch = n;
    settings.threads = config.threads;
    settings.seed = config.seed;
    return settings;
}

void check_single_batch(const ContextReport & report, uint32_t n) {
    if (report.n_ubatch < n) {
        throw ShimError(kExitDecode, "the context would split " + std::to_string(n) + " tokens into micro-batches of " +
                                         std::to_string(report.n_ubatch));
    }
}

}  // namespace shim
