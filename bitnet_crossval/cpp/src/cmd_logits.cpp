// `logits` (every position of one causal batch) and `generate` (greedy continuation).
#include <algorithm>
#include <cmath>
#include <string>

#include "commands.h"
#include "diagnostics.h"
#include "errors.h"
#include "files.h"
#include "json_writer.h"
#include "model.h"
#include "npy.h"
#include "run_common.h"

namespace shim {

namespace {

// Rows of logits per llama_decode call unless --block says otherwise: the whole sequence, one
// micro-batch (what every caller got before --block existed).
uint32_t block_size(const Options & opts, uint32_t n) {
    const auto block = static_cast<uint32_t>(opts.integer("block", n, 1, 1 << 24));
    return std::min(block, n);
}

// A line on the real stderr (fd 2 carries llama.cpp's log to the log file while a command runs).
void report_progress(bool enabled, size_t done, size_t total) {
    if (enabled) {
        Diagnostics::instance().report("bitnet-shim: progress " + std::to_string(done) + "/" + std::to_string(total));
    }
}

int run_logits(const Options & opts) {
    const std::string & path = opts.required("model");
    const std::string & out = opts.required("out");
    check_output_target(out, "--out");
    const RunConfig config = run_config(opts);
    const std::vector<int32_t> tokens = read_tokens(opts);
    if (tokens.empty()) {
        throw ShimError(kExitUsage, "logits needs at least one token");
    }
    const bool progress = opts.has("progress") && opts.flag01("progress");
    ModelPtr model = load_model(path, /*vocab_only=*/false);
    const int32_t vocab_size = n_vocab(model.get());
    check_token_ids(tokens, vocab_size);

    // A long sequence goes through in blocks, as llama.cpp's own tools do with n_ubatch: each
    // llama_decode call takes the next `block` tokens at their positions and attends to what the
    // earlier ones left in the KV cache, and its rows go to the file before the next call, so
    // neither llama.cpp's output buffer nor this process ever holds all the logits.
    const auto n = static_cast<uint32_t>(tokens.size());
    const uint32_t block = block_size(opts, n);
    ContextSettings settings = single_batch_settings(block, config);
    settings.n_ctx = n;
    OpenedContext context = open_context(model.get(), settings, config.kv);
    check_single_batch(context.report, block);
    clear_memory(context.ctx.get());
    NpyRowWriter writer(out, n, static_cast<size_t>(vocab_size));
    int64_t nonfinite = 0;
    uint32_t decode_calls = 0;
    for (uint32_t start = 0; start < n; start += block) {
        const uint32_t stop = std::min(n, start + block);
        const std::vector<int32_t> chunk(tokens.begin() + start, tokens.begin() + stop);
        decode(context.ctx.get(), chunk, static_cast<int32_t>(start), /*all_logits=*/true);
        ++decode_calls;
        for (uint32_t i = 0; i < stop - start; ++i) {
            const float * row = logits_row(context.ctx.get(), static_cast<int32_t>(i));
            for (int32_t v = 0; v < vocab_size; ++v) {
                nonfinite += std::isfinite(row[v]) ? 0 : 1;
            }
            writer.write_rows(row, 1);
        }
        report_progress(progress, stop, n);
    }
    writer.commit();

    JsonWriter json;
    json.begin_object();
    json.key("out").value(out);
    json.key("n_tokens").value(n);
    json.key("n_vocab").value(vocab_size);
    json.key("dtype").value("float32");
    json.key("block").value(block);
    json.key("n_decode_calls").value(decode_calls);
    json.key("n_nonfinite").value(nonfinite);
    write_pieces(json, model.get(), tokens, /*special=*/false);
    write_run_config(json, config, context);
    json.end_object();
    print_json(json);
    return kExitOk;
}

int run_generate(const Options & opts) {
    const std::string & path = opts.required("model");
    const std::string & out = opts.required("out-logits");
    check_output_target(out, "--out-logits");
    if (!opts.has("n")) {
        throw ShimError(kExitUsage, "generate needs --n");
    }
    const auto n_new = static_cast<uint32_t>(opts.integer("n", 1, 1, 1 << 20));
    const RunConfig config = run_config(opts);
    const std::vector<int32_t> prompt = read_tokens(opts);
    if (prompt.empty()) {
        throw ShimError(kExitUsage, "generate needs at least one prompt token");
    }
    ModelPtr model = load_model(path, /*vocab_only=*/false);
    const int32_t vocab_size = n_vocab(model.get());
    check_token_ids(prompt, vocab_size);

    const auto n_prompt = static_cast<uint32_t>(prompt.size());
    ContextSettings settings = single_batch_settings(n_prompt, config);
    settings.n_ctx = n_prompt + n_new;
    OpenedContext context = open_context(model.get(), settings, config.kv);
    llama_context * ctx = context.ctx.get();
    clear_memory(ctx);
    decode(ctx, prompt, 0, /*all_logits=*/false);

    std::vector<int32_t> generated;
    std::vector<float> logits(static_cast<size_t>(n_new) * static_cast<size_t>(vocab_size));
    int32_t last_output = static_cast<int32_t>(n_prompt) - 1;  // batch index of the row to read
    for (uint32_t k = 0; k < n_new; ++k) {
        const float * row = logits_row(ctx, last_output);
        std::copy(row, row + vocab_size, logits.begin() + static_cast<std::ptrdiff_t>(k) * vocab_size);
        const int32_t token = greedy_token(row, vocab_size);
        generated.push_back(token);
        if (k + 1 < n_new) {
            decode(ctx, {token}, static_cast<int32_t>(n_prompt + k), /*all_logits=*/false);
            last_output = 0;
        }
    }
    write_npy_f32(out, logits.data(), n_new, static_cast<size_t>(vocab_size));

    JsonWriter json;
    json.begin_object();
    json.key("tokens").int_array(generated);
    json.key("n_generated").value(static_cast<int64_t>(generated.size()));
    json.key("n_prompt").value(n_prompt);
    write_pieces(json, model.get(), generated, /*special=*/true);
    json.key("eog").begin_array();
    for (const int32_t t : generated) {
        json.value(is_eog(model.get(), t));
    }
    json.end_array();
    json.key("out_logits").value(out);
    json.key("n_vocab").value(vocab_size);
    json.key("dtype").value("float32");
    json.key("sampling").value("greedy");
    json.key("n_nonfinite").value(count_nonfinite(logits));
    write_run_config(json, config, context);
    json.end_object();
    print_json(json);
    return kExitOk;
}

}  // namespace

const CommandSpec kLogitsCommand = {
    "logits",
    "  logits     --model M (--tokens-file F | --tokens LIST) --out X.npy [--threads N]\n"
    "             [--kv-type auto|f32|f16] [--seed S] [--block N] [--progress 0|1]\n",
    {"model", "tokens-file", "tokens", "out", "threads", "kv-type", "seed", "block", "progress"},
    run_logits,
};

const CommandSpec kGenerateCommand = {
    "generate",
    "  generate   --model M (--tokens-file F | --tokens LIST) --n N --out-logits X.npy [--threads N]\n"
    "             [--kv-type auto|f32|f16] [--seed S]\n",
    {"model", "tokens-file", "tokens", "n", "out-logits", "threads", "kv-type", "seed"},
    run_generate,
};

}  // namespace shim
