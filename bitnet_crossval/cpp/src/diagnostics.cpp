#include "diagnostics.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#ifdef _WIN32
#include <io.h>
#define SHIM_DUP _dup
#define SHIM_DUP2 _dup2
#define SHIM_FILENO _fileno
#define SHIM_WRITE _write
#else
#include <unistd.h>
#define SHIM_DUP dup
#define SHIM_DUP2 dup2
#define SHIM_FILENO fileno
#define SHIM_WRITE write
#endif

#include "errors.h"
#include "files.h"

namespace shim {

namespace {

constexpr size_t kMaxCaptured = 256 * 1024;
constexpr size_t kMaxLines = 4096;
constexpr size_t kMaxReported = 300;

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

std::string trim(const std::string & s) {
    const size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) {
        return "";
    }
    const size_t e = s.find_last_not_of(" \t\r\n");
    return s.substr(b, e - b + 1);
}

std::string bounded(std::string text) {
    if (text.size() > kMaxReported) {
        text = text.substr(0, kMaxReported) + "...";
    }
    return text;
}

bool looks_like_error(const std::string & low) {
    return low.find("error") != std::string::npos || low.find("failed") != std::string::npos ||
           low.find("invalid") != std::string::npos || low.find("unknown model architecture") != std::string::npos;
}

// A wrapper that only says that something failed, not why.
bool is_generic(const std::string & low) {
    static const char * const wrappers[] = {
        "failed to load model",
        "failed to create context",
        "failed to create the context",
        "failed to create llama_context",
    };
    for (const char * w : wrappers) {
        const size_t at = low.find(w);
        if (at != std::string::npos && trim(low.substr(at + std::strlen(w))).empty()) {
            return true;
        }
    }
    return false;
}

}  // namespace

Diagnostics & Diagnostics::instance() {
    static Diagnostics diagnostics;
    return diagnostics;
}

void Diagnostics::start(bool verbose, const std::string & log_file) {
    verbose_ = verbose;
    if (verbose) {
        return;
    }
    std::FILE * sink = nullptr;
    if (!log_file.empty()) {
        // A FIFO would block the open and a device or directory is never what was meant.
        check_output_target(log_file, "log file");
        sink = std::fopen(log_file.c_str(), "ab");
        if (sink == nullptr) {
            throw ShimError(kExitUsage, "cannot open log file " + log_file + ": " + std::strerror(errno));
        }
    } else {
        sink = std::tmpfile();
    }
    if (sink != nullptr) {
        std::fflush(stderr);
        saved_stderr_ = SHIM_DUP(2);
        // Deliberately never closed: fd 2 points at it until the process ends.
        SHIM_DUP2(SHIM_FILENO(sink), 2);
    }
}

void Diagnostics::append(LogLevel level, const char * text) {
    if (text == nullptr) {
        return;
    }
    std::fputs(text, stderr);  // the log file / temporary file, or the terminal with --verbose
    std::fflush(stderr);
    buffer_ += text;
    if (buffer_.size() > kMaxCaptured) {
        buffer_.erase(0, buffer_.size() - kMaxCaptured);
    }
    if (level != LogLevel::Continue && pending_.empty()) {
        pending_error_ = level == LogLevel::Error;
    } else if (level == LogLevel::Error) {
        pending_error_ = true;
    }
    for (const char * p = text; *p != '\0'; ++p) {
        if (*p == '\n') {
            finish_line();
        } else {
            pending_ += *p;
        }
    }
}

void Diagnostics::finish_line() {
    lines_.push_back(Line{n_lines_++, pending_error_, pending_});
    if (lines_.size() > kMaxLines) {
        lines_.pop_front();
    }
    pending_.clear();
}

std::string Diagnostics::captured() const {
    std::string text = buffer_;
#ifndef _WIN32
    // Older trees print some loader errors with fprintf(stderr) instead of the log callback;
    // those went to the redirected fd 2. pread leaves the shared file offset alone.
    if (saved_stderr_ >= 0) {
        std::fflush(stderr);
        const off_t end = lseek(2, 0, SEEK_END);
        if (end > 0) {
            const off_t start = end > static_cast<off_t>(kMaxCaptured) ? end - static_cast<off_t>(kMaxCaptured) : 0;
            std::string raw(static_cast<size_t>(end - start), '\0');
            const ssize_t got = pread(2, &raw[0], raw.size(), start);
            if (got > 0) {
                raw.resize(static_cast<size_t>(got));
                text += "\n" + raw;
            }
        }
    }
#endif
    return text;
}

std::string Diagnostics::error_summary() const {
    // llama.cpp reports one failure on several lines, most specific first (e.g. the GGUF
    // reader's reason, then "failed to read header", then "failed to load model"), so the
    // first error line that is not a generic wrapper says the most.
    const std::string text = captured();
    std::string first_specific;
    std::string last_any;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t next = text.find('\n', pos);
        if (next == std::string::npos) {
            next = text.size();
        }
        const std::string line = trim(text.substr(pos, next - pos));
        const std::string low = lower(line);
        pos = next + 1;
        if (line.empty() || !looks_like_error(low)) {
            continue;
        }
        last_any = line;
        const bool generic = low.find("failed to load model") != std::string::npos;
        if (!generic && first_specific.empty()) {
            first_specific = line;
        }
    }
    return bounded(first_specific.empty() ? last_any : first_specific);
}

std::string Diagnostics::error_since(size_t mark) const {
    std::deque<Line> lines;
    for (const Line & line : lines_) {
        if (line.index >= mark) {
            lines.push_back(line);
        }
    }
    if (!pending_.empty()) {
        lines.push_back(Line{n_lines_, pending_error_, pending_});
    }
    std::string first_error;
    std::string first_errorish;
    for (const Line & line : lines) {
        const std::string text = trim(line.text);
        const std::string low = lower(text);
        const bool says_something =
            std::any_of(text.begin(), text.end(), [](unsigned char c) { return std::isalnum(c) != 0; });
        if (!says_something) {  // blank, or a rule of '=' around a boxed message
            continue;
        }
        if (line.error) {
            if (!is_generic(low)) {
                return bounded(text);
            }
            if (first_error.empty()) {
                first_error = text;
            }
        } else if (first_errorish.empty() && looks_like_error(low) && !is_generic(low)) {
            first_errorish = text;
        }
    }
    return bounded(!first_error.empty() ? first_error : first_errorish);
}

void Diagnostics::report(const std::string & line) const {
    const std::string text = line + "\n";
    const int fd = saved_stderr_ >= 0 ? saved_stderr_ : 2;
    std::fflush(stderr);
    const auto written = SHIM_WRITE(fd, text.data(), static_cast<unsigned>(text.size()));
    (void) written;
}

}  // namespace shim
