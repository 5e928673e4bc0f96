// The shim's own file handling: input files read without ever blocking on a FIFO or reading
// a device, and outputs written atomically (a unique temporary next to the target, renamed
// over it) and never onto something that is not a regular file.
#pragma once

#include <cstdio>
#include <string>

#include "errors.h"

namespace shim {

// "a directory", "a FIFO", "a character device", ... for a path that exists and is not a
// regular file; "" for a regular file or a path that does not exist.
std::string non_regular_kind(const std::string & path);

// Refuses (kExitUsage) an output path that exists and is not a regular file: a device such
// as /dev/null or /dev/full, a FIFO (opening it would block), a directory or a socket. A
// missing path or a regular file is fine. Symbolic links are followed for the check.
void check_output_target(const std::string & path, const std::string & what);

// The whole file as bytes. A missing or unreadable file, or one that is not a regular file
// (FIFO, device, directory, socket), is an error with the given exit code; a FIFO is detected
// without blocking.
std::string read_input_file(const std::string & path, const std::string & what, ExitCode code = kExitUsage);

// Up to n leading bytes of a regular file, with the same checks as read_input_file.
std::string read_file_prefix(const std::string & path, size_t n, const std::string & what, ExitCode code);

// A file written under a unique temporary name in the target's directory and renamed onto
// the target by commit(); destroyed uncommitted, the temporary is removed. The target is
// checked with check_output_target on construction and again before the rename.
class PendingFile {
public:
    PendingFile(std::string target, std::string what);
    ~PendingFile();
    PendingFile(const PendingFile &) = delete;
    PendingFile & operator=(const PendingFile &) = delete;

    const std::string & target() const { return target_; }
    const std::string & temp_path() const { return temp_; }
    // The open temporary for writing (closed by commit()).
    std::FILE * stream();
    // Closes our handle so another writer (llama.cpp's quantizer) can write temp_path().
    void close();
    // Renames the temporary onto the target; throws ShimError(kExitOther) on failure.
    void commit();

private:
    std::string target_;
    std::string what_;
    std::string temp_;
    std::FILE * stream_ = nullptr;
    bool committed_ = false;
};

// A directory built under a temporary name next to the target and renamed onto it by
// commit(), so a killed run never leaves a half-written directory under the target's name.
// The target must be absent or an empty directory (else kExitUsage).
class PendingDir {
public:
    PendingDir(std::string target, std::string what);
    ~PendingDir();
    PendingDir(const PendingDir &) = delete;
    PendingDir & operator=(const PendingDir &) = delete;

    const std::string & target() const { return target_; }
    const std::string & temp_path() const { return temp_; }
    void commit();

private:
    std::string target_;
    std::string what_;
    std::string temp_;
    bool committed_ = false;
};

}  // namespace shim
