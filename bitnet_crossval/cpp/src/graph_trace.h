// Capturing the intermediate tensors llama.cpp computes, through the graph-evaluation
// callback (cb_eval), as float32 .npy files plus the records of a trace manifest.
//
// Which tensors: named ones (the names llama.cpp's graph builders give with cb(cur, "Qcur",
// il), rendered "Qcur-0"; ggml's derived names such as "Qcur-0 (reshaped)" and the numbers it
// gives unnamed nodes, "node_65", do not count),
// of type F32/F16/BF16, whose token axis is the outermost non-unit axis. The token axis is
// followed through the graph from the token embedding lookup (GET_ROWS) op by op, so it is
// found even when the token count equals a head count; tensors whose token axis is inner
// (attention scores kq-<il>: [n_kv, n_tokens, n_head]) and tensors without one (weights,
// the KQ mask, KV cache views) are not written.
//
// Layout of a written tensor: ggml's ne reversed, from the token axis down
// ([n_tokens, n_embd]; Q/K/V after the reshape [n_tokens, n_head, head_dim]), with only the
// selected positions along the token axis. When several nodes carry the same name (Qcur-0
// after the matmul, the reshape and RoPE), the last one is kept, at its place in execution
// order. Filtered-out tensors are never copied: the callback declines them when asked.
#pragma once

#include <cstdint>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "errors.h"

struct ggml_tensor;

namespace shim {

struct TraceFilters {
    // Layers first..last. A tensor without a layer number is on the input side when no
    // layered tensor came before it (embd, inp_scaled), else on the output side (norm,
    // result_norm, result_output); it is kept when the range holds layer 0, respectively
    // the last layer (n_layer - 1).
    bool has_layers = false;
    int64_t layer_first = 0;
    int64_t layer_last = 0;
    int64_t n_layer = 0;
    bool has_names = false;
    std::string names_pattern;
    std::regex names;
    bool has_positions = false;
    std::vector<int32_t> positions;  // sorted, unique; all positions without --positions
};

struct TraceRecord {
    std::string name;
    int64_t layer = -1;  // -1: the name has no "-<il>" suffix
    std::string op;      // ggml_op_desc of the kept node
    std::string type;    // its ggml type: "f32", "f16" or "bf16" (always written as float32)
    std::vector<int64_t> ne;     // ggml's ne[0..3] of the kept node
    int token_dim = 0;           // which ne index is the token axis
    std::vector<int64_t> shape;  // of the written array
    std::string file;
    uint64_t bytes = 0;
    int64_t node = 0;            // ordinal of the kept node among all evaluated nodes
    bool superseded = false;     // a later node with the same name replaced it
};

class GraphTrace {
public:
    GraphTrace(std::string dir, int64_t n_tokens, TraceFilters filters);

    // The cb_eval callback; user_data is the GraphTrace. Never throws: a failure is kept,
    // the graph is stopped, and rethrow_if_failed() reports it after llama_decode returns.
    static bool callback(struct ggml_tensor * tensor, bool ask, void * user_data);
    void rethrow_if_failed() const;

    const TraceFilters & filters() const { return filters_; }
    // The written tensors in execution order (the last node of each name).
    std::vector<const TraceRecord *> kept() const;
    // How many nodes carried each name, and their ops in order.
    const std::vector<std::string> & ops_of(const std::string & name) const;
    int64_t n_nodes() const { return n_nodes_; }
    int64_t n_unnamed() const { return n_unnamed_; }
    int64_t n_filtered() const { return n_filtered_; }
    uint64_t bytes_copied() const { return bytes_copied_; }
    // Names seen but never written, by reason: "no_token_axis", "token_axis_inner",
    // "unsupported_type" (names that some node of the same name did write are left out).
    std::map<std::string, std::vector<std::string>> skipped_names() const;

private:
    bool ask(const struct ggml_tensor * t);
    void collect(const struct ggml_tensor * t);
    int infer_token_dim(const struct ggml_tensor * t) const;
    int token_dim_of(const struct ggml_tensor * t) const;
    std::string file_for(const std::string & name);

    std::string dir_;
    int64_t n_tokens_;
    TraceFilters filters_;
    std::unordered_map<const struct ggml_tensor *, int> token_dims_;
    std::map<std::string, std::vector<std::string>> ops_by_name_;
    std::map<std::string, std::set<std::string>> skipped_;
    std::vector<TraceRecord> records_;
    std::map<std::string, size_t> latest_;       // name -> index in records_
    std::map<std::string, std::string> files_;   // name -> file name
    std::set<std::string> used_files_;
    std::vector<char> raw_;
    std::vector<float> values_;
    int64_t n_nodes_ = 0;
    int64_t n_unnamed_ = 0;
    int64_t n_filtered_ = 0;
    uint64_t bytes_copied_ = 0;
    bool seen_layered_ = false;  // a node with a layer number came already: the output side
    bool failed_ = false;
    ExitCode error_code_ = kExitOther;
    std::string error_;
};

// "attn_norm-12" -> 12; -1 for names without a "-<digits>" suffix.
int64_t layer_of(const std::string & name);

}  // namespace shim
