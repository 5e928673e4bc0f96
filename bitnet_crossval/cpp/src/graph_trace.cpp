#include "graph_trace.h"

#include <cstring>
#include <new>
#include <stdexcept>

#include "ggml-backend.h"
#include "ggml.h"
#include "npy.h"

namespace shim {

namespace {

constexpr int kDims = 4;  // GGML_MAX_DIMS in every ggml the shim is built against

bool is_numbered(const std::string & name, const char * prefix) {
    const size_t n = std::strlen(prefix);
    return name.size() > n && name.compare(0, n, prefix) == 0 &&
           name.find_first_not_of("0123456789", n) == std::string::npos;
}

// ggml derives names for views and copies from their source ("Qcur-0 (reshaped)",
// "k_cache_view-0 (copy of Kcur-0)") and numbers the nodes nobody named ("node_65") when it
// builds the graph; only names a graph builder gave count as names.
bool is_derived_name(const std::string & name) {
    return name.find(" (") != std::string::npos || is_numbered(name, "node_") || is_numbered(name, "leaf_");
}

float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits = 0;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            exponent = 127 - 15 + 1;
            while ((mantissa & 0x400u) == 0) {
                mantissa <<= 1;
                --exponent;
            }
            mantissa &= 0x3ffu;
            bits = sign | (exponent << 23) | (mantissa << 13);
        }
    } else if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    float f = 0.0f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

float bf16_to_float(uint16_t b) {
    const uint32_t bits = static_cast<uint32_t>(b) << 16;
    float f = 0.0f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

const char * float_type_name(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_F32: return "f32";
        case GGML_TYPE_F16: return "f16";
        case GGML_TYPE_BF16: return "bf16";
        default: return nullptr;
    }
}

float read_value(const char * p, enum ggml_type type) {
    if (type == GGML_TYPE_F32) {
        float f = 0.0f;
        std::memcpy(&f, p, sizeof f);
        return f;
    }
    uint16_t h = 0;
    std::memcpy(&h, p, sizeof h);
    return type == GGML_TYPE_F16 ? half_to_float(h) : bf16_to_float(h);
}

std::string sanitize_file_stem(const std::string & name) {
    std::string out;
    for (const char c : name) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                        c == '-' || c == '.';
        out += ok ? c : '_';
    }
    if (out.empty() || out[0] == '.') {
        out = "_" + out;
    }
    return out;
}

}  // namespace

int64_t layer_of(const std::string & name) {
    const size_t dash = name.rfind('-');
    if (dash == std::string::npos || dash + 1 >= name.size() || name.size() - dash - 1 > 9) {
        return -1;
    }
    int64_t layer = 0;
    for (size_t i = dash + 1; i < name.size(); ++i) {
        if (name[i] < '0' || name[i] > '9') {
            return -1;
        }
        layer = layer * 10 + (name[i] - '0');
    }
    return layer;
}

GraphTrace::GraphTrace(std::string dir, int64_t n_tokens, TraceFilters filters)
    : dir_(std::move(dir)), n_tokens_(n_tokens), filters_(std::move(filters)) {
    if (!filters_.has_positions) {
        filters_.positions.clear();
        for (int64_t p = 0; p < n_tokens_; ++p) {
            filters_.positions.push_back(static_cast<int32_t>(p));
        }
    }
    used_files_ = {"trace.json", "logits.npy"};
}

bool GraphTrace::callback(struct ggml_tensor * tensor, bool ask, void * user_data) {
    auto * self = static_cast<GraphTrace *>(user_data);
    if (self->failed_) {
        return false;
    }
    try {
        if (ask) {
            return self->ask(tensor);
        }
        self->collect(tensor);
        return true;
    } catch (const ShimError & e) {
        self->error_code_ = e.code();
        self->error_ = e.what();
    } catch (const std::bad_alloc &) {
        self->error_code_ = kExitOther;
        self->error_ = std::string("out of memory while copying tensor ") + tensor->name;
    } catch (const std::exception & e) {
        self->error_code_ = kExitOther;
        self->error_ = std::string("tracing tensor ") + tensor->name + " failed: " + e.what();
    }
    self->failed_ = true;
    return false;  // stops the graph: the trace is lost anyway
}

void GraphTrace::rethrow_if_failed() const {
    if (failed_) {
        throw ShimError(error_code_, error_);
    }
}

int GraphTrace::token_dim_of(const struct ggml_tensor * t) const {
    if (t == nullptr) {
        return -1;
    }
    const auto it = token_dims_.find(t);
    return it == token_dims_.end() ? -1 : it->second;
}

// Where the token axis of t is, from its sources (already evaluated: nodes come in
// topological order) and its op; -1 when it has none. Views and reshapes keep the axis that
// has the same length and byte stride; copies (CONT, CPY) the one with the same number of
// elements below it; a matmul keeps its activation's; other ops the first source's whose
// axis they preserve.
int GraphTrace::infer_token_dim(const struct ggml_tensor * t) const {
    const struct ggml_tensor * s0 = t->src[0];
    const int d0 = token_dim_of(s0);
    switch (t->op) {
        case GGML_OP_GET_ROWS:
            // The token embedding lookup (ids: the batch's tokens), or a selection of token rows.
            if (t->src[1] != nullptr && t->ne[1] == n_tokens_ && (d0 < 0 || d0 == 1)) {
                return 1;
            }
            return -1;
        case GGML_OP_MUL_MAT: {
            const struct ggml_tensor * s1 = t->src[1];
            const int d1 = token_dim_of(s1);
            if (d1 >= 1 && t->ne[d1] == s1->ne[d1]) {
                return d1;
            }
            if (d0 == 1 && t->ne[0] == s0->ne[1]) {
                return 0;
            }
            return -1;
        }
        case GGML_OP_PERMUTE: {
            if (d0 < 0) {
                return -1;
            }
            int32_t axes[kDims] = {0, 1, 2, 3};
            std::memcpy(axes, t->op_params, sizeof axes);
            const int k = axes[d0];
            return (k >= 0 && k < kDims && t->ne[k] == s0->ne[d0]) ? k : -1;
        }
        case GGML_OP_VIEW:
        case GGML_OP_RESHAPE:
        case GGML_OP_TRANSPOSE:
            if (d0 < 0) {
                return -1;
            }
            for (int k = 0; k < kDims; ++k) {
                if (t->ne[k] == s0->ne[d0] && t->nb[k] == s0->nb[d0]) {
                    return k;
                }
            }
            return -1;
        case GGML_OP_CONT:
        case GGML_OP_CPY:
        case GGML_OP_DUP: {
            if (d0 < 0) {
                return -1;
            }
            int64_t below = 1;
            for (int k = 0; k < d0; ++k) {
                below *= s0->ne[k];
            }
            int64_t acc = 1;
            for (int k = 0; k < kDims; ++k) {
                if (acc == below && t->ne[k] == s0->ne[d0]) {
                    return k;
                }
                acc *= t->ne[k];
            }
            return -1;
        }
        default:
            for (int i = 0; i < GGML_MAX_SRC; ++i) {
                const struct ggml_tensor * s = t->src[i];
                const int d = token_dim_of(s);
                if (d >= 0 && t->ne[d] == s->ne[d]) {
                    return d;
                }
            }
            return -1;
    }
}

bool GraphTrace::ask(const struct ggml_tensor * t) {
    ++n_nodes_;
    const int d = infer_token_dim(t);
    if (d >= 0) {
        token_dims_[t] = d;
    }
    const std::string name = t->name;
    if (name.empty() || is_derived_name(name)) {
        ++n_unnamed_;
        return false;
    }
    ops_by_name_[name].push_back(ggml_op_desc(t));
    const int64_t layer = layer_of(name);
    if (layer >= 0) {
        seen_layered_ = true;
    }
    if (filters_.has_layers) {
        const bool wanted = layer >= 0 ? layer >= filters_.layer_first && layer <= filters_.layer_last
                            : seen_layered_ ? filters_.layer_last >= filters_.n_layer - 1
                                            : filters_.layer_first == 0;
        if (!wanted) {
            ++n_filtered_;
            return false;
        }
    }
    if (filters_.has_names && !std::regex_match(name, filters_.names)) {
        ++n_filtered_;
        return false;
    }
    if (float_type_name(t->type) == nullptr) {
        skipped_["unsupported_type"].insert(name);
        return false;
    }
    if (d < 0) {
        skipped_["no_token_axis"].insert(name);
        return false;
    }
    for (int k = d + 1; k < kDims; ++k) {
        if (t->ne[k] != 1) {
            skipped_["token_axis_inner"].insert(name);
            return false;
        }
    }
    return true;
}

std::string GraphTrace::file_for(const std::string & name) {
    const auto known = files_.find(name);
    if (known != files_.end()) {
        return known->second;
    }
    const std::string stem = sanitize_file_stem(name);
    std::string file = stem + ".npy";
    for (int k = 2; used_files_.count(file) != 0; ++k) {
        file = stem + "~" + std::to_string(k) + ".npy";
    }
    used_files_.insert(file);
    files_[name] = file;
    return file;
}

void GraphTrace::collect(const struct ggml_tensor * t) {
    const int d = token_dim_of(t);
    if (d < 0) {
        throw ShimError(kExitOther, std::string("internal error: no token axis for ") + t->name);
    }
    const size_t nbytes = ggml_nbytes(t);
    raw_.resize(nbytes);
    ggml_backend_tensor_get(t, raw_.data(), 0, nbytes);
    bytes_copied_ += nbytes;

    int64_t extent[kDims] = {1, 1, 1, 1};  // of the axes below the token axis
    int64_t per_position = 1;
    for (int k = 0; k < d; ++k) {
        extent[k] = t->ne[k];
        per_position *= t->ne[k];
    }
    const auto & positions = filters_.positions;
    values_.resize(positions.size() * static_cast<size_t>(per_position));
    size_t out = 0;
    for (const int32_t p : positions) {
        const size_t base = static_cast<size_t>(p) * t->nb[d];
        for (int64_t i2 = 0; i2 < extent[2]; ++i2) {
            for (int64_t i1 = 0; i1 < extent[1]; ++i1) {
                for (int64_t i0 = 0; i0 < extent[0]; ++i0) {
                    const size_t offset = base + static_cast<size_t>(i2) * t->nb[2] +
                                          static_cast<size_t>(i1) * t->nb[1] + static_cast<size_t>(i0) * t->nb[0];
                    values_[out++] = read_value(raw_.data() + offset, t->type);
                }
            }
        }
    }

    TraceRecord record;
    record.name = t->name;
    record.layer = layer_of(record.name);
    record.op = ggml_op_desc(t);
    record.type = float_type_name(t->type);
    record.ne.assign(t->ne, t->ne + kDims);
    record.token_dim = d;
    record.shape.push_back(static_cast<int64_t>(positions.size()));
    for (int k = d - 1; k >= 0; --k) {
        record.shape.push_back(t->ne[k]);
    }
    record.file = file_for(record.name);
    record.node = n_nodes_ - 1;
    record.bytes = write_npy_f32(dir_ + "/" + record.file, values_.data(), record.shape);

    const auto previous = latest_.find(record.name);
    if (previous != latest_.end()) {
        records_[previous->second].superseded = true;
    }
    latest_[record.name] = records_.size();
    records_.push_back(std::move(record));
}

std::vector<const TraceRecord *> GraphTrace::kept() const {
    std::vector<const TraceRecord *> out;
    for (const TraceRecord & r : records_) {
        if (!r.superseded) {
            out.push_back(&r);
        }
    }
    return out;
}

const std::vector<std::string> & GraphTrace::ops_of(const std::string & name) const {
    static const std::vector<std::string> none;
    const auto it = ops_by_name_.find(name);
    return it == ops_by_name_.end() ? none : it->second;
}

std::map<std::string, std::vector<std::string>> GraphTrace::skipped_names() const {
    std::map<std::string, std::vector<std::string>> out;
    for (const auto & entry : skipped_) {
        for (const std::string & name : entry.second) {
            if (latest_.count(name) == 0) {
                out[entry.first].push_back(name);
            }
        }
    }
    return out;
}

}  // namespace shim
