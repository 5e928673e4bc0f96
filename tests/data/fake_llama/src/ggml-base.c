int ggml_base_fake(void) { return 1; }
