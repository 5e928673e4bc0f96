#include "files.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#ifdef _WIN32
#include <io.h>
#include <process.h>
#define SHIM_GETPID _getpid
#else
#include <unistd.h>
#define SHIM_GETPID getpid
#endif

namespace shim {

namespace fs = std::filesystem;

namespace {

std::string kind_of(const fs::file_status & status) {
    switch (status.type()) {
        case fs::file_type::regular: return "";
        case fs::file_type::directory: return "a directory";
        case fs::file_type::fifo: return "a FIFO";
        case fs::file_type::character: return "a character device";
        case fs::file_type::block: return "a block device";
        case fs::file_type::socket: return "a socket";
        default: return "not a regular file";
    }
}

#ifndef _WIN32
std::string kind_of_mode(mode_t mode) {
    if (S_ISREG(mode)) {
        return "";
    }
    if (S_ISDIR(mode)) {
        return "a directory";
    }
    if (S_ISFIFO(mode)) {
        return "a FIFO";
    }
    if (S_ISCHR(mode)) {
        return "a character device";
    }
    if (S_ISBLK(mode)) {
        return "a block device";
    }
    if (S_ISSOCK(mode)) {
        return "a socket";
    }
    return "not a regular file";
}
#endif

// A process-unique suffix for temporary names.
std::string unique_suffix() {
    static unsigned counter = 0;
    return std::to_string(SHIM_GETPID()) + "-" + std::to_string(++counter);
}

std::string parent_and_name(const std::string & path, std::string & name) {
    const fs::path p(path);
    name = p.filename().string();
    const fs::path parent = p.parent_path();
    return parent.empty() ? std::string(".") : parent.string();
}

}  // namespace

std::string non_regular_kind(const std::string & path) {
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (ec || !fs::exists(status)) {
        return "";
    }
    return kind_of(status);
}

void check_output_target(const std::string & path, const std::string & what) {
    if (path.empty()) {
        throw ShimError(kExitUsage, what + " path is empty");
    }
    const std::string kind = non_regular_kind(path);
    if (!kind.empty()) {
        throw ShimError(kExitUsage, what + " " + path + " exists and is " + kind +
                                        ", not a regular file; refusing to write to it");
    }
}

#ifndef _WIN32

namespace {

// Opens a regular file for reading; O_NONBLOCK makes opening a FIFO return at once, and
// fstat then rejects it (and devices, directories, sockets) before anything is read.
int open_regular(const std::string & path, const std::string & what, ExitCode code) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        const int err = errno;
        if (err == ENOENT) {
            throw ShimError(code, what + " not found: " + path);
        }
        throw ShimError(code, "cannot read " + what + " " + path + ": " + std::strerror(err));
    }
    struct stat st {};
    if (fstat(fd, &st) != 0) {
        const int err = errno;
        ::close(fd);
        throw ShimError(code, "cannot read " + what + " " + path + ": " + std::strerror(err));
    }
    const std::string kind = kind_of_mode(st.st_mode);
    if (!kind.empty()) {
        ::close(fd);
        throw ShimError(code, what + " " + path + " is " + kind + ", not a regular file");
    }
    return fd;
}

std::string read_fd(int fd, size_t limit, const std::string & path, const std::string & what, ExitCode code) {
    std::string bytes;
    char buf[65536];
    while (bytes.size() < limit) {
        const size_t want = std::min(sizeof buf, limit - bytes.size());
        const ssize_t got = ::read(fd, buf, want);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            const int err = errno;
            ::close(fd);
            throw ShimError(code, "cannot read " + what + " " + path + ": " + std::strerror(err));
        }
        if (got == 0) {
            break;
        }
        bytes.append(buf, static_cast<size_t>(got));
    }
    ::close(fd);
    return bytes;
}

}  // namespace

std::string read_input_file(const std::string & path, const std::string & what, ExitCode code) {
    const int fd = open_regular(path, what, code);
    return read_fd(fd, static_cast<size_t>(-1), path, what, code);
}

std::string read_file_prefix(const std::string & path, size_t n, const std::string & what, ExitCode code) {
    const int fd = open_regular(path, what, code);
    return read_fd(fd, n, path, what, code);
}

#else  // _WIN32: no FIFOs to block on; check the type, then read with the C library.

std::string read_file_prefix(const std::string & path, size_t n, const std::string & what, ExitCode code) {
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (ec || !fs::exists(status)) {
        throw ShimError(code, what + " not found: " + path);
    }
    const std::string kind = kind_of(status);
    if (!kind.empty()) {
        throw ShimError(code, what + " " + path + " is " + kind + ", not a regular file");
    }
    std::FILE * f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
        throw ShimError(code, "cannot read " + what + " " + path + ": " + std::strerror(errno));
    }
    std::string bytes;
    char buf[65536];
    while (bytes.size() < n) {
        const size_t got = std::fread(buf, 1, std::min(sizeof buf, n - bytes.size()), f);
        if (got == 0) {
            break;
        }
        bytes.append(buf, got);
    }
    const bool failed = std::ferror(f) != 0;
    std::fclose(f);
    if (failed) {
        throw ShimError(code, "cannot read " + what + " " + path);
    }
    return bytes;
}

std::string read_input_file(const std::string & path, const std::string & what, ExitCode code) {
    return read_file_prefix(path, static_cast<size_t>(-1), what, code);
}

#endif

// ===== PendingFile ========================================================================

PendingFile::PendingFile(std::string target, std::string what) : target_(std::move(target)), what_(std::move(what)) {
    check_output_target(target_, what_);
    for (int attempt = 0; attempt < 100; ++attempt) {
        const std::string candidate = target_ + ".tmp-" + unique_suffix();
        // O_EXCL: never opens anything that already exists (a FIFO planted there, a link).
        const int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL
#ifdef O_CLOEXEC
                                                     | O_CLOEXEC
#endif
#ifdef _WIN32
                                                     | O_BINARY
#endif
                              ,
                              0666);
        if (fd < 0) {
            if (errno == EEXIST) {
                continue;
            }
            throw ShimError(kExitOther, "cannot create " + candidate + ": " + std::strerror(errno));
        }
        stream_ = ::fdopen(fd, "wb");
        if (stream_ == nullptr) {
            const int err = errno;
            ::close(fd);
            std::remove(candidate.c_str());
            throw ShimError(kExitOther, "cannot create " + candidate + ": " + std::strerror(err));
        }
        temp_ = candidate;
        return;
    }
    throw ShimError(kExitOther, "cannot find a free temporary name next to " + target_);
}

PendingFile::~PendingFile() {
    if (stream_ != nullptr) {
        std::fclose(stream_);
    }
    if (!committed_ && !temp_.empty()) {
        std::remove(temp_.c_str());
    }
}

std::FILE * PendingFile::stream() {
    if (stream_ == nullptr) {
        throw ShimError(kExitOther, "internal error: " + temp_ + " is already closed");
    }
    return stream_;
}

void PendingFile::close() {
    if (stream_ != nullptr) {
        const bool failed = std::fclose(stream_) != 0;
        stream_ = nullptr;
        if (failed) {
            throw ShimError(kExitOther, "cannot write " + temp_ + ": " + std::strerror(errno));
        }
    }
}

void PendingFile::commit() {
    close();
    check_output_target(target_, what_);  // it may have appeared since we started
#ifdef _WIN32
    std::remove(target_.c_str());  // rename() does not replace an existing file on Windows
#endif
    if (std::rename(temp_.c_str(), target_.c_str()) != 0) {
        throw ShimError(kExitOther, "cannot rename " + temp_ + " onto " + target_ + ": " + std::strerror(errno));
    }
    committed_ = true;
}

// ===== PendingDir =========================================================================

PendingDir::PendingDir(std::string target, std::string what) : target_(std::move(target)), what_(std::move(what)) {
    if (target_.empty()) {
        throw ShimError(kExitUsage, what_ + " path is empty");
    }
    while (target_.size() > 1 && (target_.back() == '/' || target_.back() == '\\')) {
        target_.pop_back();
    }
    std::error_code ec;
    const fs::file_status status = fs::status(target_, ec);
    if (!ec && fs::exists(status)) {
        if (!fs::is_directory(status)) {
            const std::string kind = kind_of(status);
            throw ShimError(kExitUsage, what_ + " " + target_ + " exists and is " +
                                            (kind.empty() ? std::string("a regular file") : kind) +
                                            ", not a directory");
        }
        if (!fs::is_empty(target_, ec) || ec) {
            throw ShimError(kExitUsage, what_ + " " + target_ + " is not empty; give a new or an empty directory");
        }
    }
    std::string name;
    const std::string parent = parent_and_name(target_, name);
    const fs::file_status parent_status = fs::status(parent, ec);
    if (ec || !fs::is_directory(parent_status)) {
        throw ShimError(kExitUsage, "the parent of " + what_ + " " + target_ + " is not an existing directory");
    }
    for (int attempt = 0; attempt < 100; ++attempt) {
        const std::string candidate = (fs::path(parent) / ("." + name + ".partial-" + unique_suffix())).string();
        if (fs::create_directory(candidate, ec)) {
            temp_ = candidate;
            return;
        }
        if (ec && ec != std::errc::file_exists) {
            throw ShimError(kExitOther, "cannot create " + candidate + ": " + ec.message());
        }
    }
    throw ShimError(kExitOther, "cannot find a free temporary name next to " + target_);
}

PendingDir::~PendingDir() {
    if (!committed_ && !temp_.empty()) {
        std::error_code ec;
        fs::remove_all(temp_, ec);
    }
}

void PendingDir::commit() {
    std::error_code ec;
    const fs::file_status status = fs::status(target_, ec);
    if (!ec && fs::exists(status)) {
        if (!fs::is_directory(status) || !fs::is_empty(target_, ec)) {
            throw ShimError(kExitUsage,
                            what_ + " " + target_ + " appeared while the shim ran and is not an empty directory");
        }
#ifdef _WIN32
        fs::remove(target_, ec);
#endif
    }
    // rename(2) replaces an empty directory atomically.
    if (std::rename(temp_.c_str(), target_.c_str()) != 0) {
        throw ShimError(kExitOther, "cannot rename " + temp_ + " onto " + target_ + ": " + std::strerror(errno));
    }
    committed_ = true;
}

}  // namespace shim
