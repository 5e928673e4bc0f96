// Everything that touches the llama.cpp C API lives behind this header, so the two API
// generations differ only in model.cpp:
//   current (2025+): llama_model_load_from_file, llama_init_from_model, llama_model_get_vocab,
//                    llama_tokenize(vocab, ...), llama_vocab_n_tokens, llama_memory_clear,
//                    flash_attn_type enum
//   legacy  (2024):  llama_load_model_from_file, llama_new_context_with_model,
//                    llama_tokenize(model, ...), llama_n_vocab(model), llama_kv_cache_clear,
//                    bool flash_attn, logits_all
// CMake chooses the generation by compiling probes against the given llama.h. (ggml's tensor
// API, used only by the trace's graph callback, is in graph_trace.cpp.)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "llama.h"

namespace shim {

class Diagnostics;

// --- process-wide setup -------------------------------------------------------------------

// Sends llama.cpp's log (with its level) to the diagnostics instead of stderr.
void capture_llama_log(Diagnostics & diagnostics);

// llama_backend_init() for the lifetime of the object, llama_backend_free() after.
class BackendScope {
public:
    BackendScope();
    ~BackendScope();
    BackendScope(const BackendScope &) = delete;
    BackendScope & operator=(const BackendScope &) = delete;
};

// llama_print_system_info(): the CPU features and backends compiled in.
std::string system_info();

// --- models and contexts ------------------------------------------------------------------

struct ModelDeleter {
    void operator()(llama_model * model) const;
};
struct ContextDeleter {
    void operator()(llama_context * ctx) const;
};
using ModelPtr = std::unique_ptr<llama_model, ModelDeleter>;
using ContextPtr = std::unique_ptr<llama_context, ContextDeleter>;

// Loads a GGUF on the CPU (no GPU layers). vocab_only loads hparams and vocabulary only,
// which also works for llama.cpp's vocabulary-only files. Failures are classified:
// missing/unreadable/not a regular file/not-GGUF/corrupt -> kExitModel, unknown architecture
// or tensor type -> kExitUnsupported.
ModelPtr load_model(const std::string & path, bool vocab_only);

// Rejects what we can recognise ourselves before llama.cpp sees it (kExitModel): a missing
// file, a FIFO/device/directory, a file that does not start with the GGUF magic.
void check_model_file(const std::string & path);

enum class KvType { F32, F16 };
const char * kv_type_name(KvType type);

struct KvTypes {
    KvType k = KvType::F32;
    KvType v = KvType::F32;
};

// A graph-evaluation callback (ggml_backend_sched_eval_callback): asked about every node
// before it is computed, and called again after it was computed for nodes it asked for.
using EvalCallback = bool (*)(struct ggml_tensor * tensor, bool ask, void * user_data);

struct ContextSettings {
    uint32_t n_ctx = 0;    // >= every position the run will use
    uint32_t n_batch = 0;  // >= the largest batch passed to decode (one micro-batch)
    int32_t threads = 1;
    KvTypes kv;
    uint32_t seed = 0;     // applied where the API still has a context seed
    EvalCallback eval_callback = nullptr;
    void * eval_user_data = nullptr;
};

// What the created context actually uses, as reported back to the caller.
struct ContextReport {
    uint32_t n_ctx = 0;
    uint32_t n_batch = 0;
    uint32_t n_ubatch = 0;
    bool seed_applied = false;
    bool logits_all = false;
};

// A causal context with flash attention off and the requested KV cache types, or null when
// llama.cpp refuses it; then `reason` holds the most specific line llama.cpp logged.
ContextPtr try_new_context(llama_model * model, const ContextSettings & settings, ContextReport & report,
                           std::string & reason);

// Whether llama_context_params has cb_eval/cb_eval_user_data (needed by `trace`).
bool eval_callback_supported();

// Forget every cached token, so a context's first decode starts from nothing.
void clear_memory(llama_context * ctx);

// Decodes tokens at positions pos0.. in ONE llama_decode call. With all_logits every
// position's row is requested (batch.logits[i] = 1), otherwise only the last one.
void decode(llama_context * ctx, const std::vector<int32_t> & tokens, int32_t pos0, bool all_logits);

// The logits row of output i of the last decode (n_vocab floats; i may be -1 for the last).
const float * logits_row(llama_context * ctx, int32_t i);

// --- quantization -------------------------------------------------------------------------

// The type names `quantize --type` accepts with this llama.h ("Q4_K_M", ...); empty when the
// header declares no llama_model_quantize.
std::vector<std::string> quantize_type_names();

// llama_model_quantize(in, out) to the named type (one of quantize_type_names()); throws
// ShimError with llama.cpp's reason when it fails. allow_requantize lets it read tensors that
// are already quantised (dequantising them with the type's own to_float first).
void quantize_model(const std::string & in, const std::string & out, const std::string & type, int32_t threads,
                    bool allow_requantize);

// --- vocabulary and metadata ----------------------------------------------------------------

struct ModelFacts {
    std::string architecture;
    std::string name;
    int32_t n_vocab = 0;
    int32_t n_ctx_train = 0;
    int32_t n_layer = 0;
    int32_t n_embd = 0;
    std::string vocab_type;
    int32_t bos = -1;
    int32_t eos = -1;
    bool add_bos = false;
};
ModelFacts model_facts(const llama_model * model);

// A GGUF metadata value as a string ("" when the key is absent).
std::string meta_string(const llama_model * model, const std::string & key);

std::string describe(const llama_model * model);
uint64_t n_params(const llama_model * model);
uint64_t size_bytes(const llama_model * model);

int32_t n_vocab(const llama_model * model);
bool is_eog(const llama_model * model, int32_t token);

std::vector<int32_t> tokenize(const llama_model * model, const std::string & text, bool add_special,
                              bool parse_special);
std::string token_piece(const llama_model * model, int32_t token, bool special);
std::string detokenize(const llama_model * model, const std::vector<int32_t> & tokens, bool remove_special,
                       bool unparse_special);

// Which variant of each moving part this binary was compiled for (the generation itself is
// BITNET_SHIM_API_NAME, reported as `api`).
struct ApiFeatures {
    const char * flash_attn_control;  // "flash_attn_type" or "flash_attn"
    const char * memory_clear;        // "llama_memory_clear", "llama_kv_self_clear", "llama_kv_cache_clear"
    bool logits_all_param;
    bool context_seed_param;
};
ApiFeatures api_features();

}  // namespace shim
