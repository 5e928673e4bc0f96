// Writes a 2-D float32 array as an NPY v1.0 file that numpy.load(..., mmap_mode="r") maps.
#pragma once

#include <cstddef>
#include <string>

namespace shim {

// Row-major [rows, cols] float32. Written to "<path>.tmp" and renamed over <path>, so a
// reader never sees a half-written array. Throws ShimError(kExitOther) on I/O errors.
void write_npy_f32(const std::string & path, const float * data, size_t rows, size_t cols);

}  // namespace shim
