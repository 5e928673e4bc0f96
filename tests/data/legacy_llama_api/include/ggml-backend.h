// Minimal stand-in for the 2024 ggml-backend.h: the scheduler's evaluation callback type
// llama.h takes from it, and the tensor read the shim's `trace` uses.
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ggml_backend_buffer * ggml_backend_buffer_t;

// when ask == true, the scheduler wants to know if the user wants to observe this node;
// when ask == false, the scheduler is passing the node tensor to the user for observation;
// if the user returns false, the scheduler will cancel the graph compute
typedef bool (*ggml_backend_sched_eval_callback)(struct ggml_tensor * t, bool ask, void * user_data);

GGML_API void ggml_backend_tensor_get(const struct ggml_tensor * tensor, void * data, size_t offset, size_t size);

#ifdef __cplusplus
}
#endif
