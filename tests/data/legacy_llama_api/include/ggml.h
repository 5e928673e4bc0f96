// Minimal stand-in for the ggml.h of the 2024 llama.cpp fork used by microsoft/BitNet
// (Eddie-Wang1120/llama.cpp, branch merge-dev): only what its llama.h needs. Test data for
// the shim's API-generation detection; the values follow the 2024 header.
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef GGML_API
#    define GGML_API __attribute__((visibility("default")))
#endif

#define GGML_ROPE_TYPE_NEOX 2

struct ggml_tensor;
struct ggml_threadpool;
typedef struct ggml_threadpool * ggml_threadpool_t;

enum ggml_type {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q5_1 = 7,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10,
    GGML_TYPE_Q3_K = 11,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_Q8_K = 15,
    GGML_TYPE_BF16 = 30,
    GGML_TYPE_TQ1_0 = 34,
    GGML_TYPE_TQ2_0 = 35,
    GGML_TYPE_I2_S = 36,  // the BitNet fork's own types
    GGML_TYPE_I8_S = 37,
    GGML_TYPE_TL1 = 38,
    GGML_TYPE_TL2 = 39,
    GGML_TYPE_COUNT,
};

enum ggml_numa_strategy {
    GGML_NUMA_STRATEGY_DISABLED = 0,
    GGML_NUMA_STRATEGY_DISTRIBUTE = 1,
    GGML_NUMA_STRATEGY_ISOLATE = 2,
    GGML_NUMA_STRATEGY_NUMACTL = 3,
    GGML_NUMA_STRATEGY_MIRROR = 4,
    GGML_NUMA_STRATEGY_COUNT
};

// 2024 numbering (the current tree renumbered these and added NONE and CONT).
enum ggml_log_level {
    GGML_LOG_LEVEL_ERROR = 2,
    GGML_LOG_LEVEL_WARN = 3,
    GGML_LOG_LEVEL_INFO = 4,
    GGML_LOG_LEVEL_DEBUG = 5,
};

typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data);
typedef bool (*ggml_abort_callback)(void * data);

GGML_API const char * ggml_type_name(enum ggml_type type);

#ifdef __cplusplus
}
#endif
