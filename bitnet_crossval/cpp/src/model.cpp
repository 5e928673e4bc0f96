#include "model.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "diagnostics.h"
#include "errors.h"
#include "files.h"

#ifndef BITNET_SHIM_API_CURRENT
#error "BITNET_SHIM_API_CURRENT must be defined by CMake (0 or 1)"
#endif

namespace shim {

namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// llama.cpp's log levels, mapped by name: their numbers changed between generations (the
// 2024 header starts at ERROR = 2; the current one adds NONE, DEBUG = 1 and CONT).
LogLevel level_of(enum ggml_log_level level) {
    switch (level) {
        case GGML_LOG_LEVEL_ERROR: return LogLevel::Error;
        case GGML_LOG_LEVEL_WARN: return LogLevel::Warn;
        case GGML_LOG_LEVEL_INFO: return LogLevel::Info;
        case GGML_LOG_LEVEL_DEBUG: return LogLevel::Debug;
        default: return LogLevel::Continue;  // GGML_LOG_LEVEL_CONT (and NONE)
    }
}

void log_to_diagnostics(enum ggml_log_level level, const char * text, void * user_data) {
    static_cast<Diagnostics *>(user_data)->append(level_of(level), text);
}

}  // namespace

// ===== process-wide setup ==================================================================

void capture_llama_log(Diagnostics & diagnostics) { llama_log_set(log_to_diagnostics, &diagnostics); }

BackendScope::BackendScope() { llama_backend_init(); }
BackendScope::~BackendScope() { llama_backend_free(); }

std::string system_info() {
    const char * info = llama_print_system_info();
    return info != nullptr ? info : "";
}

// ===== models ============================================================================

void ModelDeleter::operator()(llama_model * model) const {
#if BITNET_SHIM_API_CURRENT
    llama_model_free(model);
#else
    llama_free_model(model);
#endif
}

void ContextDeleter::operator()(llama_context * ctx) const { llama_free(ctx); }

void check_model_file(const std::string & path) {
    const std::string magic = read_file_prefix(path, 4, "model file", kExitModel);
    if (magic != "GGUF") {
        throw ShimError(kExitModel, "not a GGUF file (the first bytes are not 'GGUF'): " + path);
    }
}

namespace {

bool mentions_unsupported(const std::string & log) {
    static const char * const patterns[] = {
        "unknown model architecture",
        "invalid ggml type",
        "not a multiple of block size",
        "failed to find a compatible buffer type",
        "unknown tokenizer",
        "unknown pre-tokenizer",
        "unsupported tensor type",
    };
    const std::string low = lower(log);
    for (const char * p : patterns) {
        if (low.find(p) != std::string::npos) {
            return true;
        }
    }
    return false;
}

}  // namespace

ModelPtr load_model(const std::string & path, bool vocab_only) {
    check_model_file(path);
    llama_model_params params = llama_model_default_params();
    params.n_gpu_layers = 0;  // the reference runs on the CPU
    params.vocab_only = vocab_only;
#if BITNET_SHIM_API_CURRENT
    llama_model * model = llama_model_load_from_file(path.c_str(), params);
#else
    llama_model * model = llama_load_model_from_file(path.c_str(), params);
#endif
    if (model == nullptr) {
        const Diagnostics & diag = Diagnostics::instance();
        const std::string cause = diag.error_summary();
        const std::string suffix = cause.empty() ? "" : " (" + cause + ")";
        if (mentions_unsupported(diag.captured())) {
            throw ShimError(kExitUnsupported,
                            "this backend does not support the model's architecture or tensor types: " + path + suffix);
        }
        throw ShimError(kExitModel, "llama.cpp could not load the model (corrupt or incomplete?): " + path + suffix);
    }
    return ModelPtr(model);
}

const char * kv_type_name(KvType type) { return type == KvType::F32 ? "f32" : "f16"; }

namespace {

ggml_type ggml_kv_type(KvType type) { return type == KvType::F32 ? GGML_TYPE_F32 : GGML_TYPE_F16; }

}  // namespace

ContextPtr try_new_context(llama_model * model, const ContextSettings & settings, ContextReport & report,
                           std::string & reason) {
    llama_context_params params = llama_context_default_params();
    params.n_ctx = settings.n_ctx;
    params.n_batch = settings.n_batch;
    params.n_ubatch = settings.n_batch;  // one micro-batch: the whole sequence in one graph
    params.n_seq_max = 1;
    params.n_threads = settings.threads;
    params.n_threads_batch = settings.threads;
    params.embeddings = false;
    // Causal attention stated, not inherited: a reference run bidirectionally
    // (llama_set_causal_attn(ctx, false)) computes numbers no causal engine should match.
    params.attention_type = LLAMA_ATTENTION_TYPE_CAUSAL;
    // CPU flash attention accumulates V in fp16 and flipped a top-1 token in a test;
    // the non-flash path is the one a float reference can match.
#if BITNET_SHIM_HAVE_FLASH_ATTN_TYPE
    params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
#else
    params.flash_attn = false;
#endif
    params.type_k = ggml_kv_type(settings.kv.k);
    params.type_v = ggml_kv_type(settings.kv.v);
#if BITNET_SHIM_HAVE_LOGITS_ALL
    // Redundant with batch.logits[i] = 1 but harmless; some 2024 forks only honour this.
    params.logits_all = true;
    report.logits_all = true;
#endif
#if BITNET_SHIM_HAVE_SWA_FULL
    // A sliding-window layer's cache holds its window and one micro-batch, not every position:
    // the default full-size cache makes a long sequence in blocks cost memory in proportion to
    // its length on every layer (147 MB more for 4,096 tokens of Gemma 3 270M).
    params.swa_full = false;
#endif
#if BITNET_SHIM_HAVE_CPARAMS_SEED
    params.seed = settings.seed;
    report.seed_applied = true;
#endif
#if BITNET_SHIM_HAVE_CB_EVAL
    params.cb_eval = settings.eval_callback;
    params.cb_eval_user_data = settings.eval_user_data;
#else
    if (settings.eval_callback != nullptr) {
        throw ShimError(kExitUsage, "this backend's llama_context_params has no cb_eval, so it cannot be traced");
    }
#endif

    Diagnostics & diag = Diagnostics::instance();
    const size_t mark = diag.mark();
#if BITNET_SHIM_API_CURRENT
    llama_context * ctx = llama_init_from_model(model, params);
#else
    llama_context * ctx = llama_new_context_with_model(model, params);
#endif
    if (ctx == nullptr) {
        reason = diag.error_since(mark);
        if (reason.empty()) {
            reason = "llama.cpp logged no reason";
        }
        return nullptr;
    }
    reason.clear();
    report.n_ctx = llama_n_ctx(ctx);
    report.n_batch = llama_n_batch(ctx);
    report.n_ubatch = llama_n_ubatch(ctx);
    return ContextPtr(ctx);
}

bool eval_callback_supported() { return BITNET_SHIM_HAVE_CB_EVAL != 0; }

void clear_memory(llama_context * ctx) {
#if BITNET_SHIM_HAVE_MEMORY_CLEAR
    llama_memory_clear(llama_get_memory(ctx), true);
#elif BITNET_SHIM_HAVE_KV_SELF_CLEAR
    llama_kv_self_clear(ctx);
#else
    llama_kv_cache_clear(ctx);
#endif
}

void decode(llama_context * ctx, const std::vector<int32_t> & tokens, int32_t pos0, bool all_logits) {
    const auto n = static_cast<int32_t>(tokens.size());
    // Not llama_batch_get_one: it requests only the last position's logits (PR #9745).
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int32_t i = 0; i < n; ++i) {
        batch.token[i] = tokens[static_cast<size_t>(i)];
        batch.pos[i] = pos0 + i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
#if BITNET_SHIM_HAVE_BATCH_LOGITS
        batch.logits[i] = (all_logits || i == n - 1) ? 1 : 0;
#else
        batch.output[i] = (all_logits || i == n - 1) ? 1 : 0;
#endif
    }
    batch.n_tokens = n;
    Diagnostics & diag = Diagnostics::instance();
    const size_t mark = diag.mark();
    const int32_t rc = llama_decode(ctx, batch);
    llama_batch_free(batch);
    if (rc != 0) {
        std::string cause = diag.error_since(mark);
        if (cause.empty()) {
            cause = diag.error_summary();
        }
        throw ShimError(kExitDecode, "llama_decode failed with code " + std::to_string(rc) + " for " +
                                         std::to_string(n) + " tokens at position " + std::to_string(pos0) +
                                         (cause.empty() ? "" : " (" + cause + ")"));
    }
}

const float * logits_row(llama_context * ctx, int32_t i) {
    const float * row = llama_get_logits_ith(ctx, i);
    if (row == nullptr) {
        throw ShimError(kExitDecode, "llama.cpp returned no logits for output " + std::to_string(i));
    }
    return row;
}

// ===== quantization ========================================================================

namespace {

#if BITNET_SHIM_HAVE_MODEL_QUANTIZE
struct QuantType {
    const char * name;
    llama_ftype ftype;
};

// By enumerator name, never by number: the numbers of the newest types collide between the
// BitNet fork (TL1 = 38, TL2 = 39, I2_S = 40) and upstream (MXFP4_MOE = 38, ...).
const QuantType kQuantTypes[] = {
    {"F32", LLAMA_FTYPE_ALL_F32},
    {"F16", LLAMA_FTYPE_MOSTLY_F16},
    {"BF16", LLAMA_FTYPE_MOSTLY_BF16},
    {"Q8_0", LLAMA_FTYPE_MOSTLY_Q8_0},
    {"Q4_0", LLAMA_FTYPE_MOSTLY_Q4_0},
    {"Q4_1", LLAMA_FTYPE_MOSTLY_Q4_1},
    {"Q5_0", LLAMA_FTYPE_MOSTLY_Q5_0},
    {"Q5_1", LLAMA_FTYPE_MOSTLY_Q5_1},
    {"Q2_K", LLAMA_FTYPE_MOSTLY_Q2_K},
    {"Q2_K_S", LLAMA_FTYPE_MOSTLY_Q2_K_S},
    {"Q3_K_S", LLAMA_FTYPE_MOSTLY_Q3_K_S},
    {"Q3_K_M", LLAMA_FTYPE_MOSTLY_Q3_K_M},
    {"Q3_K_L", LLAMA_FTYPE_MOSTLY_Q3_K_L},
    {"Q4_K_S", LLAMA_FTYPE_MOSTLY_Q4_K_S},
    {"Q4_K_M", LLAMA_FTYPE_MOSTLY_Q4_K_M},
    {"Q5_K_S", LLAMA_FTYPE_MOSTLY_Q5_K_S},
    {"Q5_K_M", LLAMA_FTYPE_MOSTLY_Q5_K_M},
    {"Q6_K", LLAMA_FTYPE_MOSTLY_Q6_K},
    {"IQ2_XXS", LLAMA_FTYPE_MOSTLY_IQ2_XXS},
    {"IQ2_XS", LLAMA_FTYPE_MOSTLY_IQ2_XS},
    {"IQ2_S", LLAMA_FTYPE_MOSTLY_IQ2_S},
    {"IQ2_M", LLAMA_FTYPE_MOSTLY_IQ2_M},
    {"IQ3_XXS", LLAMA_FTYPE_MOSTLY_IQ3_XXS},
    {"IQ3_XS", LLAMA_FTYPE_MOSTLY_IQ3_XS},
    {"IQ3_S", LLAMA_FTYPE_MOSTLY_IQ3_S},
    {"IQ3_M", LLAMA_FTYPE_MOSTLY_IQ3_M},
    {"IQ1_S", LLAMA_FTYPE_MOSTLY_IQ1_S},
    {"IQ1_M", LLAMA_FTYPE_MOSTLY_IQ1_M},
    {"IQ4_NL", LLAMA_FTYPE_MOSTLY_IQ4_NL},
    {"IQ4_XS", LLAMA_FTYPE_MOSTLY_IQ4_XS},
#if BITNET_SHIM_HAVE_FTYPE_TQ
    {"TQ1_0", LLAMA_FTYPE_MOSTLY_TQ1_0},
    {"TQ2_0", LLAMA_FTYPE_MOSTLY_TQ2_0},
#endif
#if BITNET_SHIM_HAVE_FTYPE_I2_S
    {"I2_S", LLAMA_FTYPE_MOSTLY_I2_S},
#endif
#if BITNET_SHIM_HAVE_FTYPE_TL
    {"TL1", LLAMA_FTYPE_MOSTLY_TL1},
    {"TL2", LLAMA_FTYPE_MOSTLY_TL2},
#endif
};
#endif

}  // namespace

std::vector<std::string> quantize_type_names() {
    std::vector<std::string> names;
#if BITNET_SHIM_HAVE_MODEL_QUANTIZE
    for (const QuantType & t : kQuantTypes) {
        names.emplace_back(t.name);
    }
#endif
    return names;
}

void quantize_model(const std::string & in, const std::string & out, const std::string & type, int32_t threads,
                    bool allow_requantize) {
#if BITNET_SHIM_HAVE_MODEL_QUANTIZE
    const QuantType * chosen = nullptr;
    for (const QuantType & t : kQuantTypes) {
        if (type == t.name) {
            chosen = &t;
        }
    }
    if (chosen == nullptr) {
        throw ShimError(kExitUsage, "unknown quantization type '" + type + "'");
    }
    llama_model_quantize_params params = llama_model_quantize_default_params();
    params.nthread = threads;
    params.ftype = chosen->ftype;
    params.allow_requantize = allow_requantize;
    Diagnostics & diag = Diagnostics::instance();
    const size_t mark = diag.mark();
    const uint32_t rc = llama_model_quantize(in.c_str(), out.c_str(), &params);
    if (rc != 0) {
        std::string cause = diag.error_since(mark);
        const std::string suffix = cause.empty() ? "" : " (" + cause + ")";
        if (mentions_unsupported(cause)) {
            throw ShimError(kExitUnsupported, "llama.cpp cannot quantize this model to " + type + ": " + in + suffix);
        }
        throw ShimError(kExitOther, "llama_model_quantize failed for " + in + " -> " + type + suffix);
    }
#else
    (void) in;
    (void) out;
    (void) threads;
    (void) allow_requantize;
    throw ShimError(kExitUsage, "this backend's llama.h declares no llama_model_quantize, so it cannot quantize to " +
                                    type);
#endif
}

// ===== vocabulary and metadata =============================================================

namespace {

#if BITNET_SHIM_API_CURRENT
using VocabRef = const llama_vocab *;
VocabRef vocab_of(const llama_model * model) { return llama_model_get_vocab(model); }
#else
using VocabRef = const llama_model *;
VocabRef vocab_of(const llama_model * model) { return model; }
#endif

const char * vocab_type_name(int type) {
    switch (type) {
        case 0: return "none";
        case 1: return "spm";
        case 2: return "bpe";
        case 3: return "wpm";
        case 4: return "ugm";
        case 5: return "rwkv";
        case 6: return "plamo2";
        default: return "other";
    }
}

}  // namespace

std::string meta_string(const llama_model * model, const std::string & key) {
    std::vector<char> buf(256);
    int32_t n = llama_model_meta_val_str(model, key.c_str(), buf.data(), buf.size());
    if (n < 0) {
        return "";
    }
    if (static_cast<size_t>(n) >= buf.size()) {
        buf.resize(static_cast<size_t>(n) + 1);
        n = llama_model_meta_val_str(model, key.c_str(), buf.data(), buf.size());
        if (n < 0) {
            return "";
        }
    }
    return std::string(buf.data(), static_cast<size_t>(n));
}

int32_t n_vocab(const llama_model * model) {
#if BITNET_SHIM_API_CURRENT
    return llama_vocab_n_tokens(vocab_of(model));
#else
    return llama_n_vocab(model);
#endif
}

bool is_eog(const llama_model * model, int32_t token) {
#if BITNET_SHIM_API_CURRENT
    return llama_vocab_is_eog(vocab_of(model), token);
#else
    return llama_token_is_eog(model, token);
#endif
}

ModelFacts model_facts(const llama_model * model) {
    ModelFacts facts;
    facts.architecture = meta_string(model, "general.architecture");
    facts.name = meta_string(model, "general.name");
    facts.n_vocab = n_vocab(model);
#if BITNET_SHIM_API_CURRENT
    const VocabRef vocab = vocab_of(model);
    facts.n_ctx_train = llama_model_n_ctx_train(model);
    facts.n_layer = llama_model_n_layer(model);
    facts.n_embd = llama_model_n_embd(model);
    facts.vocab_type = vocab_type_name(static_cast<int>(llama_vocab_type(vocab)));
    facts.bos = llama_vocab_bos(vocab);
    facts.eos = llama_vocab_eos(vocab);
    facts.add_bos = llama_vocab_get_add_bos(vocab);
#else
    facts.n_ctx_train = llama_n_ctx_train(model);
    facts.n_layer = llama_n_layer(model);
    facts.n_embd = llama_n_embd(model);
    facts.vocab_type = vocab_type_name(static_cast<int>(llama_vocab_type(model)));
    facts.bos = llama_token_bos(model);
    facts.eos = llama_token_eos(model);
    facts.add_bos = llama_add_bos_token(model);
#endif
    // A vocab_only load may skip the hyperparameters; the GGUF metadata still has them.
    const auto from_meta = [&](int32_t value, const char * suffix) {
        if (value > 0 || facts.architecture.empty()) {
            return value;
        }
        const std::string text = meta_string(model, facts.architecture + suffix);
        return text.empty() ? value : static_cast<int32_t>(std::atol(text.c_str()));
    };
    facts.n_ctx_train = from_meta(facts.n_ctx_train, ".context_length");
    facts.n_layer = from_meta(facts.n_layer, ".block_count");
    facts.n_embd = from_meta(facts.n_embd, ".embedding_length");
    return facts;
}

std::string describe(const llama_model * model) {
    char buf[256];
    const int32_t n = llama_model_desc(model, buf, sizeof buf);
    return n > 0 ? std::string(buf, std::min(static_cast<size_t>(n), sizeof buf - 1)) : std::string();
}

uint64_t n_params(const llama_model * model) { return llama_model_n_params(model); }
uint64_t size_bytes(const llama_model * model) { return llama_model_size(model); }

std::vector<int32_t> tokenize(const llama_model * model, const std::string & text, bool add_special,
                              bool parse_special) {
    const VocabRef vocab = vocab_of(model);
    if (text.size() > static_cast<size_t>(INT32_MAX / 2)) {
        throw ShimError(kExitUsage, "text is too long to tokenize");
    }
    const auto len = static_cast<int32_t>(text.size());
    std::vector<llama_token> out(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), len, out.data(), static_cast<int32_t>(out.size()), add_special,
                               parse_special);
    if (n < 0) {
        if (n == INT32_MIN) {
            throw ShimError(kExitUsage, "tokenization overflowed");
        }
        out.resize(static_cast<size_t>(-n));
        n = llama_tokenize(vocab, text.data(), len, out.data(), static_cast<int32_t>(out.size()), add_special,
                           parse_special);
        if (n < 0) {
            throw ShimError(kExitOther, "llama_tokenize failed twice");
        }
    }
    out.resize(static_cast<size_t>(n));
    return std::vector<int32_t>(out.begin(), out.end());
}

std::string token_piece(const llama_model * model, int32_t token, bool special) {
    const VocabRef vocab = vocab_of(model);
    std::string piece(32, '\0');
    int32_t n = llama_token_to_piece(vocab, token, &piece[0], static_cast<int32_t>(piece.size()), 0, special);
    if (n < 0) {
        piece.resize(static_cast<size_t>(-n));
        n = llama_token_to_piece(vocab, token, &piece[0], static_cast<int32_t>(piece.size()), 0, special);
        if (n < 0) {
            throw ShimError(kExitOther, "llama_token_to_piece failed for token " + std::to_string(token));
        }
    }
    piece.resize(static_cast<size_t>(n));
    return piece;
}

std::string detokenize(const llama_model * model, const std::vector<int32_t> & tokens, bool remove_special,
                       bool unparse_special) {
    const VocabRef vocab = vocab_of(model);
    const std::vector<llama_token> ids(tokens.begin(), tokens.end());
    std::string text(std::max<size_t>(16, ids.size() * 8), '\0');
    int32_t n = llama_detokenize(vocab, ids.data(), static_cast<int32_t>(ids.size()), &text[0],
                                 static_cast<int32_t>(text.size()), remove_special, unparse_special);
    if (n < 0) {
        text.resize(static_cast<size_t>(-n));
        n = llama_detokenize(vocab, ids.data(), static_cast<int32_t>(ids.size()), &text[0],
                             static_cast<int32_t>(text.size()), remove_special, unparse_special);
        if (n < 0) {
            throw ShimError(kExitOther, "llama_detokenize failed twice");
        }
    }
    text.resize(static_cast<size_t>(n));
    return text;
}

ApiFeatures api_features() {
    ApiFeatures f{};
    f.flash_attn_control = BITNET_SHIM_HAVE_FLASH_ATTN_TYPE ? "flash_attn_type" : "flash_attn";
#if BITNET_SHIM_HAVE_MEMORY_CLEAR
    f.memory_clear = "llama_memory_clear";
#elif BITNET_SHIM_HAVE_KV_SELF_CLEAR
    f.memory_clear = "llama_kv_self_clear";
#else
    f.memory_clear = "llama_kv_cache_clear";
#endif
    f.logits_all_param = BITNET_SHIM_HAVE_LOGITS_ALL != 0;
    f.context_seed_param = BITNET_SHIM_HAVE_CPARAMS_SEED != 0;
    return f;
}

}  // namespace shim
