// A stand-in libllama implementing the 2024 C API of include/llama.h trivially, so the shim
// can be compiled, linked and run against that API generation without the real fork.
//
// It loads any file (the shim has already checked the GGUF magic), knows 259 tokens
// (<unk>, <s>, </s>, then one token per byte), and "computes" logits that depend only on
// the tokens at positions <= the row's position, like a causal model. Like the real 2024
// library, it returns no logits for positions the batch did not request, and it refuses a
// context with flash attention on (the stub's own rule, so a shim that forgot to turn it off
// fails visibly) and, as the real fork does (src/llama.cpp, llama_new_context_with_model), a
// V cache of any type but F16 without flash attention. With a cb_eval in the context
// parameters, llama_decode runs the callback over a small graph of named tensors (see
// eval_stub_graph) the way ggml's scheduler does. llama_model_quantize copies the file.
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

#define STUB_N_VOCAB 259
#define STUB_BYTE0 3
#define STUB_MAX_POS 4096

struct llama_model {
    int vocab_only;
};

struct llama_context {
    const struct llama_model * model;
    struct llama_context_params params;
    llama_token history[STUB_MAX_POS];
    int32_t n_outputs;
    int32_t output_of[STUB_MAX_POS];  // batch index -> output row, -1 if not requested
    float * logits;                   // n_outputs rows of STUB_N_VOCAB
};

static ggml_log_callback g_log = NULL;
static void * g_log_data = NULL;

static void stub_log(enum ggml_log_level level, const char * fmt, ...) {
    char buf[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(buf, sizeof buf, fmt, args);
    va_end(args);
    if (g_log != NULL) {
        g_log(level, buf, g_log_data);
    } else {
        fputs(buf, stderr);
    }
}

void llama_log_set(ggml_log_callback log_callback, void * user_data) {
    g_log = log_callback;
    g_log_data = user_data;
}

struct llama_model_params llama_model_default_params(void) {
    struct llama_model_params p;
    memset(&p, 0, sizeof p);
    p.n_gpu_layers = 0;
    p.use_mmap = true;
    return p;
}

struct llama_model_quantize_params llama_model_quantize_default_params(void) {
    struct llama_model_quantize_params p;
    memset(&p, 0, sizeof p);
    p.nthread = 0;
    p.ftype = LLAMA_FTYPE_MOSTLY_Q5_1;
    p.output_tensor_type = GGML_TYPE_COUNT;
    p.token_embedding_type = GGML_TYPE_COUNT;
    p.quantize_output_tensor = true;
    return p;
}

// Not a quantiser: copies the file, so the shim's plumbing around the call can be tested.
uint32_t llama_model_quantize(const char * fname_inp, const char * fname_out, const llama_model_quantize_params * params) {
    (void) params;
    FILE * in = fopen(fname_inp, "rb");
    if (in == NULL) {
        stub_log(GGML_LOG_LEVEL_ERROR, "llama_model_quantize: failed to quantize: cannot open %s\n", fname_inp);
        return 1;
    }
    FILE * out = fopen(fname_out, "wb");
    if (out == NULL) {
        fclose(in);
        stub_log(GGML_LOG_LEVEL_ERROR, "llama_model_quantize: failed to quantize: cannot create %s\n", fname_out);
        return 1;
    }
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, in)) > 0) {
        fwrite(buf, 1, got, out);
    }
    fclose(in);
    fclose(out);
    return 0;
}

struct llama_context_params llama_context_default_params(void) {
    struct llama_context_params p;
    memset(&p, 0, sizeof p);
    p.n_ctx = 512;
    p.n_batch = 2048;
    p.n_ubatch = 512;
    p.n_seq_max = 1;
    p.n_threads = 4;
    p.n_threads_batch = 4;
    p.attention_type = LLAMA_ATTENTION_TYPE_UNSPECIFIED;
    p.type_k = GGML_TYPE_F16;
    p.type_v = GGML_TYPE_F16;
    p.flash_attn = false;
    return p;
}

void llama_backend_init(void) {}
void llama_backend_free(void) {}

struct llama_model * llama_load_model_from_file(const char * path_model, struct llama_model_params params) {
    FILE * f = fopen(path_model, "rb");
    if (f == NULL) {
        stub_log(GGML_LOG_LEVEL_ERROR, "llama_load_model_from_file: failed to open %s\n", path_model);
        return NULL;
    }
    fclose(f);
    struct llama_model * model = (struct llama_model *) calloc(1, sizeof *model);
    model->vocab_only = params.vocab_only;
    stub_log(GGML_LOG_LEVEL_INFO, "legacy stub: loaded %s\n", path_model);
    return model;
}

void llama_free_model(struct llama_model * model) { free(model); }

struct llama_context * llama_new_context_with_model(struct llama_model * model, struct llama_context_params params) {
    if (params.flash_attn) {
        stub_log(GGML_LOG_LEVEL_ERROR, "legacy stub: refusing flash_attn = true\n");
        return NULL;
    }
    if (params.type_v != GGML_TYPE_F16 && !params.flash_attn) {
        stub_log(GGML_LOG_LEVEL_ERROR, "%s: V cache quantization requires flash_attn\n", "llama_new_context_with_model");
        return NULL;
    }
    if (params.n_ctx == 0 || params.n_ctx > STUB_MAX_POS) {
        stub_log(GGML_LOG_LEVEL_ERROR, "legacy stub: n_ctx %u out of range\n", params.n_ctx);
        return NULL;
    }
    struct llama_context * ctx = (struct llama_context *) calloc(1, sizeof *ctx);
    ctx->model = model;
    ctx->params = params;
    return ctx;
}

void llama_free(struct llama_context * ctx) {
    if (ctx != NULL) {
        free(ctx->logits);
        free(ctx);
    }
}

const struct llama_model * llama_get_model(const struct llama_context * ctx) { return ctx->model; }
uint32_t llama_n_ctx(const struct llama_context * ctx) { return ctx->params.n_ctx; }
uint32_t llama_n_batch(const struct llama_context * ctx) { return ctx->params.n_batch; }
uint32_t llama_n_ubatch(const struct llama_context * ctx) { return ctx->params.n_ubatch; }
uint32_t llama_n_seq_max(const struct llama_context * ctx) { return ctx->params.n_seq_max; }

enum llama_vocab_type llama_vocab_type(const struct llama_model * model) {
    (void) model;
    return LLAMA_VOCAB_TYPE_SPM;
}
int32_t llama_n_vocab(const struct llama_model * model) {
    (void) model;
    return STUB_N_VOCAB;
}
int32_t llama_n_ctx_train(const struct llama_model * model) {
    (void) model;
    return 128;
}
int32_t llama_n_embd(const struct llama_model * model) {
    (void) model;
    return 8;
}
int32_t llama_n_layer(const struct llama_model * model) {
    (void) model;
    return 1;
}

static int32_t copy_string(const char * value, char * buf, size_t buf_size) {
    if (buf_size > 0) {
        snprintf(buf, buf_size, "%s", value);
    }
    return (int32_t) strlen(value);
}

int32_t llama_model_meta_val_str(const struct llama_model * model, const char * key, char * buf, size_t buf_size) {
    (void) model;
    if (strcmp(key, "general.architecture") == 0) {
        return copy_string("legacy-stub", buf, buf_size);
    }
    if (strcmp(key, "general.name") == 0) {
        return copy_string("legacy llama.cpp API stub", buf, buf_size);
    }
    if (buf_size > 0) {
        buf[0] = '\0';
    }
    return -1;
}

int32_t llama_model_desc(const struct llama_model * model, char * buf, size_t buf_size) {
    (void) model;
    return copy_string("legacy-stub", buf, buf_size);
}
uint64_t llama_model_size(const struct llama_model * model) {
    (void) model;
    return 0;
}
uint64_t llama_model_n_params(const struct llama_model * model) {
    (void) model;
    return 0;
}

void llama_kv_cache_clear(struct llama_context * ctx) {
    memset(ctx->history, 0, sizeof ctx->history);
}

struct llama_batch llama_batch_get_one(llama_token * tokens, int32_t n_tokens, llama_pos pos_0, llama_seq_id seq_id) {
    struct llama_batch batch;
    memset(&batch, 0, sizeof batch);
    batch.n_tokens = n_tokens;
    batch.token = tokens;
    batch.all_pos_0 = pos_0;
    batch.all_pos_1 = 1;
    batch.all_seq_id = seq_id;
    return batch;
}

struct llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max) {
    struct llama_batch batch;
    memset(&batch, 0, sizeof batch);
    if (embd != 0) {
        batch.embd = (float *) calloc((size_t) n_tokens * (size_t) embd, sizeof(float));
    } else {
        batch.token = (llama_token *) calloc((size_t) n_tokens, sizeof(llama_token));
    }
    batch.pos = (llama_pos *) calloc((size_t) n_tokens, sizeof(llama_pos));
    batch.n_seq_id = (int32_t *) calloc((size_t) n_tokens, sizeof(int32_t));
    batch.seq_id = (llama_seq_id **) calloc((size_t) n_tokens + 1, sizeof(llama_seq_id *));
    for (int32_t i = 0; i < n_tokens; ++i) {
        batch.seq_id[i] = (llama_seq_id *) calloc((size_t) n_seq_max, sizeof(llama_seq_id));
    }
    batch.logits = (int8_t *) calloc((size_t) n_tokens, sizeof(int8_t));
    return batch;
}

void llama_batch_free(struct llama_batch batch) {
    free(batch.token);
    free(batch.embd);
    free(batch.pos);
    free(batch.n_seq_id);
    if (batch.seq_id != NULL) {
        for (int32_t i = 0; batch.seq_id[i] != NULL; ++i) {
            free(batch.seq_id[i]);
        }
    }
    free(batch.seq_id);
    free(batch.logits);
}

// A causal "model": a summary of the prefix up to and including pos.
static void stub_logits_row(const struct llama_context * ctx, llama_pos pos, float * row) {
    double state = 0.0;
    for (llama_pos p = 0; p <= pos; ++p) {
        state = state * 0.5 + (double) (ctx->history[p] + 1) * (double) (p + 1);
    }
    for (int32_t v = 0; v < STUB_N_VOCAB; ++v) {
        row[v] = (float) sin(0.37 * (double) (v + 1) + 0.01 * state);
    }
}

// ----- the graph seen by cb_eval ---------------------------------------------------------

#define STUB_EMBD 8
#define STUB_HEADS 2
#define STUB_HEAD_DIM 4
#define STUB_MAX_NODES 16

struct stub_graph {
    struct ggml_tensor tensors[STUB_MAX_NODES + 4];
    int n_tensors;
    struct ggml_tensor * nodes[STUB_MAX_NODES];
    int n_nodes;
};

static size_t stub_type_size(enum ggml_type type) {
    return (type == GGML_TYPE_F16 || type == GGML_TYPE_BF16) ? 2 : 4;
}

// A tensor of its own (contiguous) memory; a node when op != NONE, else a leaf.
static struct ggml_tensor * stub_tensor(struct stub_graph * g, const char * name, enum ggml_type type, enum ggml_op op,
                                        int64_t ne0, int64_t ne1, int64_t ne2) {
    struct ggml_tensor * t = &g->tensors[g->n_tensors++];
    memset(t, 0, sizeof *t);
    t->type = type;
    t->op = op;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    t->ne[3] = 1;
    t->nb[0] = stub_type_size(type);
    for (int i = 1; i < GGML_MAX_DIMS; ++i) {
        t->nb[i] = t->nb[i - 1] * (size_t) t->ne[i - 1];
    }
    t->data = calloc((size_t) (ne0 * ne1 * ne2), stub_type_size(type));
    snprintf(t->name, sizeof t->name, "%s", name);
    if (op != GGML_OP_NONE) {
        g->nodes[g->n_nodes++] = t;
    }
    return t;
}

// A node that views the memory of src with its own shape and strides.
static struct ggml_tensor * stub_view(struct stub_graph * g, const char * name, enum ggml_op op, struct ggml_tensor * src,
                                      const int64_t ne[3], const size_t nb[3]) {
    struct ggml_tensor * t = &g->tensors[g->n_tensors++];
    memset(t, 0, sizeof *t);
    t->type = src->type;
    t->op = op;
    for (int i = 0; i < 3; ++i) {
        t->ne[i] = ne[i];
        t->nb[i] = nb[i];
    }
    t->ne[3] = 1;
    t->nb[3] = nb[2] * (size_t) ne[2];
    t->src[0] = src;
    t->view_src = src;
    t->data = src->data;
    snprintf(t->name, sizeof t->name, "%s", name);
    g->nodes[g->n_nodes++] = t;
    return t;
}

static float * f32(struct ggml_tensor * t) { return (float *) t->data; }

static uint16_t to_f16(float f) {  // round-to-nearest-even for normal values; enough here
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000u;
    int32_t exponent = (int32_t) ((x >> 23) & 0xff) - 127 + 15;
    uint32_t mantissa = x & 0x7fffffu;
    if (exponent <= 0) {
        return (uint16_t) sign;
    }
    if (exponent >= 31) {
        return (uint16_t) (sign | 0x7c00u);
    }
    uint32_t half = sign | ((uint32_t) exponent << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) {
        half += 1;
    }
    return (uint16_t) half;
}

static uint16_t to_bf16(float f) {  // truncation: the stub only needs exact round trips
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    return (uint16_t) (x >> 16);
}

// Runs cb_eval over a small llama-like graph for the batch's tokens, as ggml's scheduler
// does: every node is offered with ask = true, and the ones the callback wants are handed
// over (ask = false) once computed; a false answer then cancels the rest. The graph:
//   inp_embd    GET_ROWS  [8, n]      attn_norm-0  RMS_NORM [8, n]
//   Qcur-0      MUL_MAT   [8, n], then RESHAPE [4, 2, n] (same name twice)
//   Vcur-0      CPY       [8, n] F16
//   kq-0        MUL_MAT   [n, n, 2] of a permuted Qcur-0 (token axis inner: never written)
//   kqv_out-0   VIEW      [8, n] of a wider unnamed [16, n] node (not contiguous)
//   l_out-0     ADD       [8, n] BF16
//   result_norm RMS_NORM  [8, n]      result_output MUL_MAT [259, n] (the logits)
static int32_t eval_stub_graph(struct llama_context * ctx, struct llama_batch batch) {
    const int64_t n = batch.n_tokens;
    const int64_t E = STUB_EMBD;
    struct stub_graph * g = (struct stub_graph *) calloc(1, sizeof *g);
    ggml_backend_sched_eval_callback cb = ctx->params.cb_eval;
    void * ud = ctx->params.cb_eval_user_data;

    struct ggml_tensor * tok_embd = stub_tensor(g, "token_embd.weight", GGML_TYPE_F32, GGML_OP_NONE, E, STUB_N_VOCAB, 1);
    struct ggml_tensor * inp_tokens = stub_tensor(g, "inp_tokens", GGML_TYPE_I32, GGML_OP_NONE, n, 1, 1);
    struct ggml_tensor * wk = stub_tensor(g, "k_cache_view-0", GGML_TYPE_F32, GGML_OP_NONE, STUB_HEAD_DIM, n, STUB_HEADS);

    struct ggml_tensor * embd = stub_tensor(g, "inp_embd", GGML_TYPE_F32, GGML_OP_GET_ROWS, E, n, 1);
    embd->src[0] = tok_embd;
    embd->src[1] = inp_tokens;
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t e = 0; e < E; ++e) {
            f32(embd)[i * E + e] = (float) sin(0.1 * (double) ((batch.token[i] + 1) * (e + 1)));
        }
    }

    struct ggml_tensor * norm = stub_tensor(g, "attn_norm-0", GGML_TYPE_F32, GGML_OP_RMS_NORM, E, n, 1);
    norm->src[0] = embd;
    for (int64_t i = 0; i < n; ++i) {
        double ss = 0.0;
        for (int64_t e = 0; e < E; ++e) {
            ss += (double) f32(embd)[i * E + e] * f32(embd)[i * E + e];
        }
        const float scale = (float) (1.0 / sqrt(ss / (double) E + 1e-5));
        for (int64_t e = 0; e < E; ++e) {
            f32(norm)[i * E + e] = f32(embd)[i * E + e] * scale;
        }
    }

    struct ggml_tensor * q = stub_tensor(g, "Qcur-0", GGML_TYPE_F32, GGML_OP_MUL_MAT, E, n, 1);
    q->src[1] = norm;
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t e = 0; e < E; ++e) {
            double acc = 0.0;
            for (int64_t j = 0; j < E; ++j) {
                acc += cos(0.3 * (double) ((e + 1) * (j + 1))) * f32(norm)[i * E + j];
            }
            f32(q)[i * E + e] = (float) acc;
        }
    }
    const int64_t q3_ne[3] = {STUB_HEAD_DIM, STUB_HEADS, n};
    const size_t q3_nb[3] = {4, 4 * STUB_HEAD_DIM, 4 * (size_t) E};
    struct ggml_tensor * q3 = stub_view(g, "Qcur-0", GGML_OP_RESHAPE, q, q3_ne, q3_nb);

    struct ggml_tensor * v = stub_tensor(g, "Vcur-0", GGML_TYPE_F16, GGML_OP_CPY, E, n, 1);
    v->src[0] = norm;
    for (int64_t k = 0; k < E * n; ++k) {
        ((uint16_t *) v->data)[k] = to_f16(f32(norm)[k] * 0.5f);
    }

    const int64_t qp_ne[3] = {STUB_HEAD_DIM, n, STUB_HEADS};
    const size_t qp_nb[3] = {4, 4 * (size_t) E, 4 * STUB_HEAD_DIM};
    struct ggml_tensor * qp = stub_view(g, "Qcur-0 (permuted)", GGML_OP_PERMUTE, q3, qp_ne, qp_nb);
    qp->op_params[0] = 0;
    qp->op_params[1] = 2;
    qp->op_params[2] = 1;
    qp->op_params[3] = 3;
    struct ggml_tensor * kq = stub_tensor(g, "kq-0", GGML_TYPE_F32, GGML_OP_MUL_MAT, n, n, STUB_HEADS);
    kq->src[0] = wk;
    kq->src[1] = qp;

    struct ggml_tensor * wide = stub_tensor(g, "", GGML_TYPE_F32, GGML_OP_MUL_MAT, 2 * E, n, 1);
    wide->src[1] = norm;
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t e = 0; e < 2 * E; ++e) {
            f32(wide)[i * 2 * E + e] = f32(q)[i * E + (e % E)] * (e < E ? 1.0f : -2.0f) + (float) i;
        }
    }
    const int64_t kqv_ne[3] = {E, n, 1};
    const size_t kqv_nb[3] = {4, 4 * 2 * (size_t) E, 4 * 2 * (size_t) E * (size_t) n};
    struct ggml_tensor * kqv_out = stub_view(g, "kqv_out-0", GGML_OP_VIEW, wide, kqv_ne, kqv_nb);

    struct ggml_tensor * l_out = stub_tensor(g, "l_out-0", GGML_TYPE_BF16, GGML_OP_ADD, E, n, 1);
    l_out->src[0] = embd;
    l_out->src[1] = kqv_out;
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t e = 0; e < E; ++e) {
            ((uint16_t *) l_out->data)[i * E + e] = to_bf16(f32(embd)[i * E + e] + f32(wide)[i * 2 * E + e]);
        }
    }

    struct ggml_tensor * result_norm = stub_tensor(g, "result_norm", GGML_TYPE_F32, GGML_OP_RMS_NORM, E, n, 1);
    result_norm->src[0] = l_out;
    for (int64_t k = 0; k < E * n; ++k) {
        f32(result_norm)[k] = f32(norm)[k];
    }

    struct ggml_tensor * result_output = stub_tensor(g, "result_output", GGML_TYPE_F32, GGML_OP_MUL_MAT, STUB_N_VOCAB, n, 1);
    result_output->src[1] = result_norm;
    for (int64_t i = 0; i < n; ++i) {
        const llama_pos pos = batch.pos != NULL ? batch.pos[i] : batch.all_pos_0 + (llama_pos) i * batch.all_pos_1;
        stub_logits_row(ctx, pos, f32(result_output) + i * STUB_N_VOCAB);
    }

    int32_t rc = 0;
    for (int k = 0; k < g->n_nodes; ++k) {
        if (cb(g->nodes[k], true, ud) && !cb(g->nodes[k], false, ud)) {
            break;  // the callback cancelled the graph
        }
    }
    for (int k = 0; k < g->n_tensors; ++k) {
        if (g->tensors[k].view_src == NULL) {
            free(g->tensors[k].data);
        }
    }
    free(g);
    return rc;
}

int32_t llama_decode(struct llama_context * ctx, struct llama_batch batch) {
    if (batch.n_tokens <= 0 || batch.n_tokens > STUB_MAX_POS || batch.token == NULL) {
        stub_log(GGML_LOG_LEVEL_ERROR, "llama_decode: empty batch\n");
        return -1;
    }
    for (int32_t i = 0; i < batch.n_tokens; ++i) {
        const llama_pos pos = batch.pos != NULL ? batch.pos[i] : batch.all_pos_0 + i * batch.all_pos_1;
        if (pos < 0 || pos >= (llama_pos) ctx->params.n_ctx || batch.token[i] < 0 ||
            batch.token[i] >= STUB_N_VOCAB) {
            stub_log(GGML_LOG_LEVEL_ERROR, "llama_decode: invalid token or position at %d\n", i);
            return -1;
        }
        ctx->history[pos] = batch.token[i];
    }
    free(ctx->logits);
    ctx->n_outputs = 0;
    for (int32_t i = 0; i < batch.n_tokens; ++i) {
        const bool wanted = ctx->params.logits_all || (batch.logits != NULL ? batch.logits[i] != 0 : i == batch.n_tokens - 1);
        ctx->output_of[i] = wanted ? ctx->n_outputs++ : -1;
    }
    ctx->logits = (float *) calloc((size_t) ctx->n_outputs * STUB_N_VOCAB, sizeof(float));
    for (int32_t i = 0; i < batch.n_tokens; ++i) {
        if (ctx->output_of[i] < 0) {
            continue;
        }
        const llama_pos pos = batch.pos != NULL ? batch.pos[i] : batch.all_pos_0 + i * batch.all_pos_1;
        stub_logits_row(ctx, pos, ctx->logits + (size_t) ctx->output_of[i] * STUB_N_VOCAB);
    }
    if (ctx->params.cb_eval != NULL) {
        return eval_stub_graph(ctx, batch);
    }
    return 0;
}

void llama_set_n_threads(struct llama_context * ctx, int32_t n_threads, int32_t n_threads_batch) {
    ctx->params.n_threads = n_threads;
    ctx->params.n_threads_batch = n_threads_batch;
}

void llama_set_causal_attn(struct llama_context * ctx, bool causal_attn) {
    (void) ctx;
    (void) causal_attn;
}

float * llama_get_logits(struct llama_context * ctx) { return ctx->logits; }

float * llama_get_logits_ith(struct llama_context * ctx, int32_t i) {
    if (i < 0) {
        i += ctx->n_outputs;  // negative indices count outputs from the end
        return (i >= 0 && i < ctx->n_outputs) ? ctx->logits + (size_t) i * STUB_N_VOCAB : NULL;
    }
    if (i >= STUB_MAX_POS || ctx->output_of[i] < 0) {
        stub_log(GGML_LOG_LEVEL_ERROR, "llama_get_logits_ith: invalid logits id %d\n", i);
        return NULL;
    }
    return ctx->logits + (size_t) ctx->output_of[i] * STUB_N_VOCAB;
}

bool llama_token_is_eog(const struct llama_model * model, llama_token token) {
    (void) model;
    return token == 2;
}
llama_token llama_token_bos(const struct llama_model * model) {
    (void) model;
    return 1;
}
llama_token llama_token_eos(const struct llama_model * model) {
    (void) model;
    return 2;
}
bool llama_add_bos_token(const struct llama_model * model) {
    (void) model;
    return true;
}
bool llama_add_eos_token(const struct llama_model * model) {
    (void) model;
    return false;
}

int32_t llama_tokenize(const struct llama_model * model, const char * text, int32_t text_len, llama_token * tokens,
                       int32_t n_tokens_max, bool add_special, bool parse_special) {
    (void) model;
    (void) parse_special;
    const int32_t needed = text_len + (add_special ? 1 : 0);
    if (needed > n_tokens_max) {
        return -needed;
    }
    int32_t n = 0;
    if (add_special) {
        tokens[n++] = 1;
    }
    for (int32_t i = 0; i < text_len; ++i) {
        tokens[n++] = STUB_BYTE0 + (unsigned char) text[i];
    }
    return n;
}

int32_t llama_token_to_piece(const struct llama_model * model, llama_token token, char * buf, int32_t length,
                             int32_t lstrip, bool special) {
    (void) model;
    (void) lstrip;
    static const char * const specials[] = {"<unk>", "<s>", "</s>"};
    char piece[8];
    int32_t n = 0;
    if (token >= STUB_BYTE0 && token < STUB_N_VOCAB) {
        piece[0] = (char) (token - STUB_BYTE0);
        n = 1;
    } else if (token >= 0 && token < STUB_BYTE0 && special) {
        n = (int32_t) strlen(specials[token]);
        memcpy(piece, specials[token], (size_t) n);
    }
    if (n > length) {
        return -n;
    }
    memcpy(buf, piece, (size_t) n);
    return n;
}

int32_t llama_detokenize(const struct llama_model * model, const llama_token * tokens, int32_t n_tokens, char * text,
                         int32_t text_len_max, bool remove_special, bool unparse_special) {
    int32_t total = 0;
    for (int32_t i = 0; i < n_tokens; ++i) {
        if (remove_special && i == 0 && tokens[i] == 1) {
            continue;
        }
        char piece[8];
        const int32_t n = llama_token_to_piece(model, tokens[i], piece, sizeof piece, 0, unparse_special);
        if (total + n <= text_len_max) {
            memcpy(text + total, piece, (size_t) n);
        }
        total += n;
    }
    return total <= text_len_max ? total : -total;
}

const char * llama_print_system_info(void) { return "LEGACY_STUB = 1 | "; }
