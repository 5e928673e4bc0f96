#include "npy.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "errors.h"

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
std::string npy_header(size_t rows, size_t cols) {
    std::string dict = "{'descr': '";
    dict += host_is_little_endian() ? "<f4" : ">f4";
    dict += "', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " + std::to_string(cols) + "), }";
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

[[noreturn]] void io_failure(const std::string & what, const std::string & path, int err) {
    throw ShimError(kExitOther, "cannot " + what + " " + path + ": " + std::strerror(err));
}

}  // namespace

void write_npy_f32(const std::string & path, const float * data, size_t rows, size_t cols) {
    const std::string tmp = path + ".tmp";
    std::FILE * f = std::fopen(tmp.c_str(), "wb");
    if (f == nullptr) {
        io_failure("create", tmp, errno);
    }
    const std::string header = npy_header(rows, cols);
    const size_t count = rows * cols;
    bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
    if (ok && count > 0) {
        ok = std::fwrite(data, sizeof(float), count, f) == count;
    }
    const int write_errno = errno;
    if (std::fclose(f) != 0 && ok) {
        ok = false;
    }
    if (!ok) {
        std::remove(tmp.c_str());
        io_failure("write", tmp, write_errno != 0 ? write_errno : EIO);
    }
#ifdef _WIN32
    std::remove(path.c_str());  // rename() does not replace an existing file on Windows
#endif
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        std::remove(tmp.c_str());
        io_failure("rename onto", path, err);
    }
}

}  // namespace shim
