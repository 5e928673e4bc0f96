// A stand-in libggml for the legacy API stub: the shim links libggml, so one must exist.
#include "ggml.h"

const char * ggml_type_name(enum ggml_type type) {
    switch (type) {
        case GGML_TYPE_F32: return "f32";
        case GGML_TYPE_F16: return "f16";
        default: return "other";
    }
}
