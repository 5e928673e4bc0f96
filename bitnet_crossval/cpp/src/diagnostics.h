// Keeping llama.cpp's chatter off our stderr and remembering it to explain failures.
//
// The protocol promises one error line on stderr, so llama.cpp's log (delivered by the log
// callback model.h installs) and any stray writes to fd 2 go to a temporary file or to
// --log-file. Everything is also kept, bounded, so a failure can be classified and explained
// with llama.cpp's own words. Nothing here calls llama.cpp.
#pragma once

#include <cstddef>
#include <deque>
#include <string>

namespace shim {

enum class LogLevel { Debug, Info, Warn, Error, Continue };

class Diagnostics {
public:
    static Diagnostics & instance();

    // Redirects fd 2 to log_file (appended) or to a temporary file, unless verbose.
    void start(bool verbose, const std::string & log_file);

    // One piece of llama.cpp's log (a line or part of one); Continue keeps the level of the
    // line it continues.
    void append(LogLevel level, const char * text);

    // Everything llama.cpp said so far (bounded), including what it wrote straight to fd 2.
    std::string captured() const;
    // The most specific line llama.cpp logged about a failure, trimmed; "" if none.
    std::string error_summary() const;

    // A position in the log; error_since(mark) looks only at what was logged after it.
    size_t mark() const { return n_lines_; }
    // The first error-level line logged since the mark that says more than a generic
    // "failed to ..." wrapper (else the first error-level one, else the first error-looking
    // line); trimmed, "" if none.
    std::string error_since(size_t mark) const;

    // Writes one line to the real stderr.
    void report(const std::string & line) const;

private:
    struct Line {
        size_t index;
        bool error;
        std::string text;
    };

    Diagnostics() = default;
    void finish_line();

    std::string buffer_;
    std::deque<Line> lines_;
    size_t n_lines_ = 0;
    std::string pending_;
    bool pending_error_ = false;
    int saved_stderr_ = -1;
    bool verbose_ = true;
};

}  // namespace shim
