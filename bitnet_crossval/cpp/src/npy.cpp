#include "npy.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "errors.h"
#include "files.h"

namespace shim {

namespace {

bool host_is_little_endian() {
    const uint16_t probe = 1;
    unsigned char first = 0;
    std::memcpy(&first, &probe, 1);
    return first == 1;
}

// The format: magic "\x93NUMPY", version 1.0, a little-endian uint16 header length, then a
// Python dict literal padded with spaces and ended by '\n' so the data starts on a 64-byte
// boundary (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html).
std::string npy_header(const std::vector<int64_t> & shape) {
    std::string dims;
    for (size_t i = 0; i < shape.size(); ++i) {
        dims += std::to_string(shape[i]);
        if (shape.size() == 1 || i + 1 < shape.size()) {
            dims += shape.size() == 1 ? "," : ", ";
        }
    }
    std::string dict = "{'descr': '";
    dict += host_is_little_endian() ? "<f4" : ">f4";
    dict += "', 'fortran_order': False, 'shape': (" + dims + "), }";
    const size_t preamble = 10;  // magic (6) + version (2) + header length (2)
    size_t total = preamble + dict.size() + 1;
    const size_t padded = (total + 63) / 64 * 64;
    dict.append(padded - total, ' ');
    dict += '\n';
    const auto header_len = static_cast<uint16_t>(dict.size());
    std::string out("\x93NUMPY\x01\x00", 8);
    out += static_cast<char>(header_len & 0xff);
    out += static_cast<char>((header_len >> 8) & 0xff);
    out += dict;
    return out;
}

}  // namespace

uint64_t write_npy_f32(const std::string & path, const float * data, const std::vector<int64_t> & shape) {
    if (shape.empty()) {
        throw ShimError(kExitOther, "internal error: a 0-d array for " + path);
    }
    size_t count = 1;
    for (const int64_t d : shape) {
        count *= static_cast<size_t>(d);
    }
    PendingFile file(path, "output file");
    std::FILE * f = file.stream();
    const std::string header = npy_header(shape);
    bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
    if (ok && count > 0) {
        ok = std::fwrite(data, sizeof(float), count, f) == count;
    }
    if (!ok) {
        const int err = errno != 0 ? errno : EIO;
        throw ShimError(kExitOther, "cannot write " + file.temp_path() + ": " + std::strerror(err));
    }
    file.commit();
    return header.size() + count * sizeof(float);
}

uint64_t write_npy_f32(const std::string & path, const float * data, size_t rows, size_t cols) {
    return write_npy_f32(path, data, {static_cast<int64_t>(rows), static_cast<int64_t>(cols)});
}

NpyRowWriter::NpyRowWriter(const std::string & path, size_t rows, size_t cols)
    : file_(path, "output file"), rows_(rows), cols_(cols) {
    const std::string header = npy_header({static_cast<int64_t>(rows), static_cast<int64_t>(cols)});
    if (std::fwrite(header.data(), 1, header.size(), file_.stream()) != header.size()) {
        const int err = errno != 0 ? errno : EIO;
        throw ShimError(kExitOther, "cannot write " + file_.temp_path() + ": " + std::strerror(err));
    }
    bytes_ = header.size();
}

void NpyRowWriter::write_rows(const float * data, size_t count) {
    if (written_ + count > rows_) {
        throw ShimError(kExitOther, "internal error: more rows than the array holds for " + file_.target());
    }
    const size_t n = count * cols_;
    if (n > 0 && std::fwrite(data, sizeof(float), n, file_.stream()) != n) {
        const int err = errno != 0 ? errno : EIO;
        throw ShimError(kExitOther, "cannot write " + file_.temp_path() + ": " + std::strerror(err));
    }
    written_ += count;
    bytes_ += n * sizeof(float);
}

uint64_t NpyRowWriter::commit() {
    if (written_ != rows_) {
        throw ShimError(kExitOther, "internal error: " + std::to_string(written_) + " of " + std::to_string(rows_) +
                                        " rows written to " + file_.target());
    }
    file_.commit();
    return bytes_;
}

}  // namespace shim
