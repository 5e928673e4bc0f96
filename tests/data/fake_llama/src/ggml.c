int ggml_base_fake(void);
int ggml_fake_version(void) { return ggml_base_fake() + 1; }
