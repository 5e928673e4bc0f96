/* bitnet.cpp's libggml exports its I2_S quantiser; this is how detection recognises it. */
#include <stddef.h>
size_t quantize_i2_s(const float * src, void * dst, long nrow, long n_per_row, const float * imatrix) {
    (void)src; (void)dst; (void)imatrix;
    return (size_t)(nrow * n_per_row / 4);
}
