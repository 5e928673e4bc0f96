// Writes float32 arrays as NPY v1.0 files that numpy.load(..., mmap_mode="r") maps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace shim {

// Row-major float32 of the given shape (any rank >= 1). Written through a PendingFile (a
// unique temporary renamed onto path), so a reader never sees a half-written array and a
// path that is not a regular file is refused (kExitUsage). Throws ShimError(kExitOther) on
// I/O errors. Returns the number of bytes written.
uint64_t write_npy_f32(const std::string & path, const float * data, const std::vector<int64_t> & shape);

// The common 2-D case: [rows, cols].
uint64_t write_npy_f32(const std::string & path, const float * data, size_t rows, size_t cols);

}  // namespace shim
