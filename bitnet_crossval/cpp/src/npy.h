// Writes float32 arrays as NPY v1.0 files that numpy.load(..., mmap_mode="r") maps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "files.h"

namespace shim {

// Row-major float32 of the given shape (any rank >= 1). Written through a PendingFile (a
// unique temporary renamed onto path), so a reader never sees a half-written array and a
// path that is not a regular file is refused (kExitUsage). Throws ShimError(kExitOther) on
// I/O errors. Returns the number of bytes written.
uint64_t write_npy_f32(const std::string & path, const float * data, const std::vector<int64_t> & shape);

// The common 2-D case: [rows, cols].
uint64_t write_npy_f32(const std::string & path, const float * data, size_t rows, size_t cols);

// A float32 [rows, cols] array written a few rows at a time, so a caller that produces rows in
// blocks never holds them all. Written like write_npy_f32 (a PendingFile renamed onto the path
// by commit(), which checks that exactly `rows` rows came); dropped uncommitted, nothing appears.
class NpyRowWriter {
public:
    NpyRowWriter(const std::string & path, size_t rows, size_t cols);
    NpyRowWriter(const NpyRowWriter &) = delete;
    NpyRowWriter & operator=(const NpyRowWriter &) = delete;

    // Appends `count` rows of `cols` floats each.
    void write_rows(const float * data, size_t count);
    size_t rows_written() const { return written_; }
    // Returns the number of bytes written.
    uint64_t commit();

private:
    PendingFile file_;
    size_t rows_;
    size_t cols_;
    size_t written_ = 0;
    uint64_t bytes_ = 0;
};

}  // namespace shim
