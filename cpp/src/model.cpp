#include "model.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>

#ifdef _WIN32
#include <io.h>
#define SHIM_DUP _dup
#define SHIM_DUP2 _dup2
#define SHIM_FILENO _fileno
#define SHIM_WRITE _write
#else
#include <fcntl.h>
#include <unistd.h>
#define SHIM_DUP dup
#define SHIM_DUP2 dup2
#define SHIM_FILENO fileno
#define SHIM_WRITE write
#endif

#include "errors.h"

#ifndef BITNET_SHIM_API_CURRENT
#error "BITNET_SHIM_API_CURRENT must be defined by CMake (0 or 1)"
#endif

namespace shim {

// ===== diagnostics =========================================================================

namespace {

constexpr size_t kMaxCaptured = 256 * 1024;

void log_to_diagnostics(enum ggml_log_level /*level*/, const char * text, void * user_data) {
    static_cast<Diagnostics *>(user_data)->append(text);
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

std::string trim(const std::string & s) {
    const size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) {
        return "";
    }
    const size_t e = s.find_last_not_of(" \t\r\n");
    return s.substr(b, e - b + 1);
}

}  // namespace

Diagnostics & Diagnostics::instance() {
    static Diagnostics diagnostics;
    return diagnostics;
}

void Diagnostics::start(bool verbose, const std::string & log_file) {
    verbose_ = verbose;
    if (!verbose) {
        std::FILE * sink = nullptr;
        if (!log_file.empty()) {
            sink = std::fopen(log_file.c_str(), "ab");
            if (sink == nullptr) {
                throw ShimError(kExitUsage, "cannot open log file " + log_file + ": " + std::strerror(errno));
            }
        } else {
            sink = std::tmpfile();
        }
        if (sink != nullptr) {
            std::fflush(stderr);
            saved_stderr_ = SHIM_DUP(2);
            // Deliberately never closed: fd 2 points at it until the process ends.
            SHIM_DUP2(SHIM_FILENO(sink), 2);
        }
    }
    llama_log_set(log_to_diagnostics, this);
}

void Diagnostics::append(const char * text) {
    if (text == nullptr) {
        return;
    }
    std::fputs(text, stderr);  // the log file / temporary file, or the terminal with --verbose
    std::fflush(stderr);
    buffer_ += text;
    if (buffer_.size() > kMaxCaptured) {
        buffer_.erase(0, buffer_.size() - kMaxCaptured);
    }
}

std::string Diagnostics::captured() const {
    std::string text = buffer_;
#ifndef _WIN32
    // Older trees print some loader errors with fprintf(stderr) instead of the log callback;
    // those went to the redirected fd 2. pread leaves the shared file offset alone.
    if (saved_stderr_ >= 0) {
        std::fflush(stderr);
        const off_t end = lseek(2, 0, SEEK_END);
        if (end > 0) {
            const off_t start = end > static_cast<off_t>(kMaxCaptured) ? end - static_cast<off_t>(kMaxCaptured) : 0;
            std::string raw(static_cast<size_t>(end - start), '\0');
            const ssize_t got = pread(2, &raw[0], raw.size(), start);
            if (got > 0) {
                raw.resize(static_cast<size_t>(got));
                text += "\n" + raw;
            }
        }
    }
#endif
    return text;
}

std::string Diagnostics::error_summary() const {
    // llama.cpp reports one failure on several lines, most specific first (e.g. the GGUF
    // reader's reason, then "failed to read header", then "failed to load model"), so the
    // first error line that is not a generic wrapper says the most.
    const std::string text = captured();
    std::string first_specific;
    std::string last_any;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t next = text.find('\n', pos);
        if (next == std::string::npos) {
            next = text.size();
        }
        const std::string line = trim(text.substr(pos, next - pos));
        const std::string low = lower(line);
        pos = next + 1;
        const bool errorish = low.find("error") != std::string::npos || low.find("failed") != std::string::npos ||
                              low.find("invalid") != std::string::npos ||
                              low.find("unknown model architecture") != std::string::npos;
        if (line.empty() || !errorish) {
            continue;
        }
        last_any = line;
        const bool generic = low.find("failed to load model") != std::string::npos;
        if (!generic && first_specific.empty()) {
            first_specific = line;
        }
    }
    std::string found = first_specific.empty() ? last_any : first_specific;
    if (found.size() > 300) {
        found = found.substr(0, 300) + "...";
    }
    return found;
}

void Diagnostics::report(const std::string & line) const {
    const std::string text = line + "\n";
    const int fd = saved_stderr_ >= 0 ? saved_stderr_ : 2;
    std::fflush(stderr);
    const auto written = SHIM_WRITE(fd, text.data(), static_cast<unsigned>(text.size()));
    (void) written;
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

namespace {

// Reject what we can recognise ourselves before llama.cpp sees it: a clearer message, and
// no dependence on how a given snapshot reacts to a directory or a random file.
void check_model_file(const std::string & path) {
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status)) {
        throw ShimError(kExitModel, "model file not found: " + path);
    }
    if (!std::filesystem::is_regular_file(status)) {
        throw ShimError(kExitModel, "model path is not a regular file: " + path);
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw ShimError(kExitModel, "cannot read model file " + path + ": " + std::strerror(errno));
    }
    char magic[4] = {0, 0, 0, 0};
    in.read(magic, 4);
    if (in.gcount() != 4 || std::memcmp(magic, "GGUF", 4) != 0) {
        throw ShimError(kExitModel, "not a GGUF file (the first bytes are not 'GGUF'): " + path);
    }
}

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

ContextPtr new_context(llama_model * model, const ContextSettings & settings, ContextReport & report) {
    llama_context_params params = llama_context_default_params();
    params.n_ctx = settings.n_ctx;
    params.n_batch = settings.n_batch;
    params.n_ubatch = settings.n_batch;  // one micro-batch: the whole sequence in one graph
    params.n_seq_max = 1;
    params.n_threads = settings.threads;
    params.n_threads_batch = settings.threads;
    params.embeddings = false;
    // Causal attention stated, not inherited: the Rust original ran the reference
    // bidirectionally (llama_set_causal_attn(ctx, false)) and compared the wrong numbers.
    params.attention_type = LLAMA_ATTENTION_TYPE_CAUSAL;
    // CPU flash attention accumulates V in fp16 and flipped a top-1 token in a test;
    // the non-flash path is the one a float reference can match.
#if BITNET_SHIM_HAVE_FLASH_ATTN_TYPE
    params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
#else
    params.flash_attn = false;
#endif
    const ggml_type kv = settings.kv_type == KvType::F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    params.type_k = kv;
    params.type_v = kv;
#if BITNET_SHIM_HAVE_LOGITS_ALL
    // Redundant with batch.logits[i] = 1 but harmless; some 2024 forks only honour this.
    params.logits_all = true;
    report.logits_all = true;
#endif
#if BITNET_SHIM_HAVE_CPARAMS_SEED
    params.seed = settings.seed;
    report.seed_applied = true;
#endif

#if BITNET_SHIM_API_CURRENT
    llama_context * ctx = llama_init_from_model(model, params);
#else
    llama_context * ctx = llama_new_context_with_model(model, params);
#endif
    if (ctx == nullptr) {
        const std::string cause = Diagnostics::instance().error_summary();
        throw ShimError(kExitDecode, "llama.cpp could not create a context" + (cause.empty() ? "" : " (" + cause + ")"));
    }
    report.n_ctx = llama_n_ctx(ctx);
    report.n_batch = llama_n_batch(ctx);
    report.n_ubatch = llama_n_ubatch(ctx);
    return ContextPtr(ctx);
}

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
    const int32_t rc = llama_decode(ctx, batch);
    llama_batch_free(batch);
    if (rc != 0) {
        const std::string cause = Diagnostics::instance().error_summary();
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
    f.generation = BITNET_SHIM_API_CURRENT ? "current" : "legacy";
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
