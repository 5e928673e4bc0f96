// Minimal stand-in for the 2024 ggml-backend.h: the one type llama.h takes from it.
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data);

#ifdef __cplusplus
}
#endif
