// Pieces the subcommands share: printing the JSON document, reading token inputs, and the
// evaluation settings (threads, KV cache type with its fallback, seed) and their report.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "json_writer.h"
#include "model.h"
#include "options.h"

namespace shim {

// The reference configuration. Fixed and reported, so two runs are comparable and a
// report says exactly what the reference computed.
constexpr long long kDefaultThreads = 1;
constexpr long long kDefaultSeed = 42;

// The one JSON document on stdout.
void print_json(const JsonWriter & json);

// --tokens-file F or --tokens LIST (exactly one).
std::vector<int32_t> read_tokens(const Options & opts);
void check_token_ids(const std::vector<int32_t> & tokens, int32_t vocab_size);

void write_backend(JsonWriter & json);
void write_pieces(JsonWriter & json, const llama_model * model, const std::vector<int32_t> & tokens, bool special);

// --kv-type: auto (F32 K and V, falling back to F32 K + F16 V, then F16 K and V, when
// llama.cpp refuses the context), or exactly f32 / f16.
enum class KvRequest { Auto, F32, F16 };
const char * kv_request_name(KvRequest request);

struct RunConfig {
    int32_t threads = 1;
    KvRequest kv = KvRequest::Auto;
    uint32_t seed = 0;
};
// --threads, --kv-type, --seed
RunConfig run_config(const Options & opts);

struct OpenedContext {
    ContextPtr ctx;
    ContextReport report;
    KvTypes kv;
    std::string fallback;  // why the KV types differ from the first choice; "" if they do not
};

// A context with the requested KV cache types; with KvRequest::Auto the fallbacks are tried
// in order. When nothing works: ShimError(kExitDecode) carrying llama.cpp's reasons.
OpenedContext open_context(llama_model * model, ContextSettings settings, KvRequest request);

// The run settings every evaluating command reports.
void write_run_config(JsonWriter & json, const RunConfig & config, const OpenedContext & context);

// Argmax over finite values, lowest id on ties (numpy.argmax agrees on finite rows).
int32_t greedy_token(const float * row, int32_t n_vocab);
int64_t count_nonfinite(const std::vector<float> & values);

}  // namespace shim

namespace shim {

// The logits rows of the last decode's n outputs, row-major [n, n_vocab].
std::vector<float> read_logits(llama_context * ctx, uint32_t n, int32_t vocab_size);

// Context settings for evaluating n tokens causally in one micro-batch.
ContextSettings single_batch_settings(uint32_t n, const RunConfig & config);

// Refuses a context that would split n tokens into several micro-batches.
void check_single_batch(const ContextReport & report, uint32_t n);

}  // namespace shim
