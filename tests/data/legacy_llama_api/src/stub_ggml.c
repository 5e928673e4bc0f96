// A stand-in libggml for the legacy API stub: the shim links libggml, so one must exist, and
// `trace` reads tensors through it. Tensors here live in plain host memory.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "ggml.h"

const char * ggml_type_name(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_F32: return "f32";
        case GGML_TYPE_F16: return "f16";
        case GGML_TYPE_BF16: return "bf16";
        case GGML_TYPE_I32: return "i32";
        default: return "other";
    }
}

const char * ggml_op_name(enum ggml_op op) {
    switch (op) {
        case GGML_OP_NONE: return "NONE";
        case GGML_OP_DUP: return "DUP";
        case GGML_OP_ADD: return "ADD";
        case GGML_OP_MUL: return "MUL";
        case GGML_OP_RMS_NORM: return "RMS_NORM";
        case GGML_OP_MUL_MAT: return "MUL_MAT";
        case GGML_OP_SCALE: return "SCALE";
        case GGML_OP_CPY: return "CPY";
        case GGML_OP_CONT: return "CONT";
        case GGML_OP_RESHAPE: return "RESHAPE";
        case GGML_OP_VIEW: return "VIEW";
        case GGML_OP_PERMUTE: return "PERMUTE";
        case GGML_OP_TRANSPOSE: return "TRANSPOSE";
        case GGML_OP_GET_ROWS: return "GET_ROWS";
        case GGML_OP_SOFT_MAX: return "SOFT_MAX";
        case GGML_OP_ROPE: return "ROPE";
        default: return "OTHER";
    }
}

const char * ggml_op_desc(const struct ggml_tensor * t) { return ggml_op_name(t->op); }

static size_t type_size(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_F16:
        case GGML_TYPE_BF16: return 2;
        default: return 4;
    }
}

size_t ggml_nbytes(const struct ggml_tensor * tensor) {
    size_t nbytes = type_size(tensor->type);
    for (int i = 0; i < GGML_MAX_DIMS; ++i) {
        if (tensor->ne[i] <= 0) {
            return 0;
        }
        nbytes += (size_t) (tensor->ne[i] - 1) * tensor->nb[i];
    }
    return nbytes;
}

void ggml_backend_tensor_get(const struct ggml_tensor * tensor, void * data, size_t offset, size_t size) {
    if (tensor->data == NULL || offset + size > ggml_nbytes(tensor)) {
        fprintf(stderr, "ggml_backend_tensor_get: tensor read out of bounds\n");
        abort();
    }
    memcpy(data, (const char *) tensor->data + offset, size);
}
