#pragma once
int ggml_fake_version(void);
