// A stand-in libllama implementing the 2024 C API of include/llama.h trivially, so the shim
// can be compiled, linked and run against that API generation without the real fork.
//
// It loads any file (the shim has already checked the GGUF magic), knows 259 tokens
// (<unk>, <s>, </s>, then one token per byte), and "computes" logits that depend only on
// the tokens at positions <= the row's position, like a causal model. Like the real 2024
// library, it returns no logits for positions the batch did not request, and it refuses a
// context with flash attention on, so a shim that forgot either fails visibly.
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

struct llama_context_params llama_context_default_params(void) {
    struct llama_context_params p;
    memset(&p, 0, sizeof p);
    p.seed = LLAMA_DEFAULT_SEED;
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
        // A causal "model": a summary of the prefix up to and including pos.
        double state = 0.0;
        for (llama_pos p = 0; p <= pos; ++p) {
            state = state * 0.5 + (double) (ctx->history[p] + 1) * (double) (p + 1);
        }
        float * row = ctx->logits + (size_t) ctx->output_of[i] * STUB_N_VOCAB;
        for (int32_t v = 0; v < STUB_N_VOCAB; ++v) {
            row[v] = (float) sin(0.37 * (double) (v + 1) + 0.01 * state);
        }
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
