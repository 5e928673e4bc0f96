// `trace`: the causal single-batch evaluation of `logits`, with a graph-evaluation callback
// that writes the intermediate tensors llama.cpp computes (graph_trace.h) into a directory,
// with a manifest (trace.json) and the logits (logits.npy).
#include <algorithm>
#include <cstdlib>
#include <regex>

#include "commands.h"
#include "errors.h"
#include "files.h"
#include "graph_trace.h"
#include "json_writer.h"
#include "model.h"
#include "npy.h"
#include "run_common.h"

namespace shim {

namespace {

constexpr int kTraceFormatVersion = 1;

bool parse_index(const std::string & text, int64_t & value) {
    if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos) {
        return false;
    }
    value = std::atoll(text.c_str());
    return true;
}

// "A-B" or "A" (one layer).
void parse_layers(const std::string & text, TraceFilters & filters) {
    const size_t dash = text.find('-');
    int64_t first = 0;
    int64_t last = 0;
    const bool ok = dash == std::string::npos
                        ? parse_index(text, first) && parse_index(text, last)
                        : parse_index(text.substr(0, dash), first) && parse_index(text.substr(dash + 1), last);
    if (!ok || first > last) {
        throw ShimError(kExitUsage, "--layers takes a layer range A-B (or one layer A), not '" + text + "'");
    }
    filters.has_layers = true;
    filters.layer_first = first;
    filters.layer_last = last;
}

// "0,5,7-9": positions and inclusive ranges, each inside [0, n_tokens).
void parse_positions(const std::string & text, int64_t n_tokens, TraceFilters & filters) {
    std::vector<int32_t> positions;
    size_t start = 0;
    while (start <= text.size()) {
        size_t comma = text.find(',', start);
        if (comma == std::string::npos) {
            comma = text.size();
        }
        const std::string item = text.substr(start, comma - start);
        const size_t dash = item.find('-');
        int64_t a = 0;
        int64_t b = 0;
        const bool ok = dash == std::string::npos
                            ? parse_index(item, a) && parse_index(item, b)
                            : parse_index(item.substr(0, dash), a) && parse_index(item.substr(dash + 1), b);
        if (!ok || a > b) {
            throw ShimError(kExitUsage, "--positions takes a list like 0,5,7-9, not '" + text + "'");
        }
        if (b >= n_tokens) {
            throw ShimError(kExitUsage, "--positions " + text + ": position " + std::to_string(b) +
                                            " is past the last token (" + std::to_string(n_tokens) + " tokens)");
        }
        for (int64_t p = a; p <= b; ++p) {
            positions.push_back(static_cast<int32_t>(p));
        }
        start = comma + 1;
    }
    std::sort(positions.begin(), positions.end());
    positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
    filters.has_positions = true;
    filters.positions = positions;
}

TraceFilters parse_filters(const Options & opts, int64_t n_tokens) {
    TraceFilters filters;
    if (opts.has("layers")) {
        parse_layers(opts.required("layers"), filters);
    }
    if (opts.has("names")) {
        filters.has_names = true;
        filters.names_pattern = opts.required("names");
        try {
            filters.names = std::regex(filters.names_pattern, std::regex::ECMAScript);
        } catch (const std::regex_error & e) {
            throw ShimError(kExitUsage, "--names '" + filters.names_pattern + "' is not a valid regular expression (" +
                                            e.what() + ")");
        }
    }
    if (opts.has("positions")) {
        parse_positions(opts.required("positions"), n_tokens, filters);
    }
    return filters;
}

void write_filters(JsonWriter & json, const TraceFilters & filters) {
    json.key("filters").begin_object();
    json.key("layers");
    if (filters.has_layers) {
        json.begin_array().value(filters.layer_first).value(filters.layer_last).end_array();
    } else {
        json.null();
    }
    json.key("names");
    filters.has_names ? json.value(filters.names_pattern) : json.null();
    json.key("positions");
    filters.has_positions ? json.int_array(filters.positions) : json.null();
    json.end_object();
}

void write_int64_array(JsonWriter & json, const std::vector<int64_t> & values) {
    json.begin_array();
    for (const int64_t v : values) {
        json.value(v);
    }
    json.end_array();
}

std::string manifest_text(const GraphTrace & trace, const std::string & model_path, const ModelFacts & facts,
                          const std::vector<int32_t> & tokens, const RunConfig & config,
                          const OpenedContext & context) {
    const TraceFilters & filters = trace.filters();
    JsonWriter json;
    json.begin_object();
    json.key("format").value("bitnet-shim-trace");
    json.key("version").value(kTraceFormatVersion);
    json.key("model").value(model_path);
    json.key("architecture").value(facts.architecture);
    json.key("n_layer").value(facts.n_layer);
    json.key("n_embd").value(facts.n_embd);
    json.key("n_vocab").value(facts.n_vocab);
    json.key("n_tokens").value(static_cast<int64_t>(tokens.size()));
    json.key("tokens").int_array(tokens);
    json.key("positions").int_array(filters.positions);
    write_filters(json, filters);
    json.key("tensors").begin_array();
    int64_t index = 0;
    for (const TraceRecord * r : trace.kept()) {
        const std::vector<std::string> & ops = trace.ops_of(r->name);
        json.begin_object();
        json.key("index").value(index++);
        json.key("name").value(r->name);
        json.key("layer");
        r->layer >= 0 ? json.value(r->layer) : json.null();
        json.key("op").value(r->op);
        json.key("n_nodes").value(static_cast<int64_t>(ops.size()));
        json.key("ops").string_array(ops);
        json.key("node").value(r->node);
        json.key("type").value(r->type);
        json.key("ne");
        write_int64_array(json, r->ne);
        json.key("token_dim").value(r->token_dim);
        json.key("shape");
        write_int64_array(json, r->shape);
        json.key("dtype").value("float32");
        json.key("file").value(r->file);
        json.key("bytes").value(r->bytes);
        json.key("positions").int_array(filters.positions);
        json.end_object();
    }
    json.end_array();
    json.key("n_graph_nodes").value(trace.n_nodes());
    json.key("n_unnamed_nodes").value(trace.n_unnamed());
    json.key("n_filtered_nodes").value(trace.n_filtered());
    json.key("skipped").begin_object();
    for (const auto & entry : trace.skipped_names()) {
        json.key(entry.first).string_array(entry.second);
    }
    json.end_object();
    json.key("logits").begin_object();
    json.key("file").value("logits.npy");
    json.key("shape").begin_array().value(static_cast<int64_t>(tokens.size())).value(facts.n_vocab).end_array();
    json.end_object();
    write_run_config(json, config, context);
    json.end_object();
    return json.str() + "\n";
}

int run_trace(const Options & opts) {
    const std::string & path = opts.required("model");
    const std::string & out_dir = opts.required("out-dir");
    const RunConfig config = run_config(opts);
    const std::vector<int32_t> tokens = read_tokens(opts);
    if (tokens.empty()) {
        throw ShimError(kExitUsage, "trace needs at least one token");
    }
    const auto n = static_cast<uint32_t>(tokens.size());
    TraceFilters filters = parse_filters(opts, n);
    if (!eval_callback_supported()) {
        throw ShimError(kExitUsage, "this backend's llama_context_params has no cb_eval, so it cannot be traced");
    }
    PendingDir dir(out_dir, "--out-dir");

    ModelPtr model = load_model(path, /*vocab_only=*/false);
    const ModelFacts facts = model_facts(model.get());
    check_token_ids(tokens, facts.n_vocab);
    filters.n_layer = facts.n_layer;
    if (filters.has_layers && filters.layer_first >= facts.n_layer) {
        throw ShimError(kExitUsage, "--layers " + std::to_string(filters.layer_first) + "-" +
                                        std::to_string(filters.layer_last) + " selects no layer of this model (" +
                                        std::to_string(facts.n_layer) + " layers, 0-" +
                                        std::to_string(facts.n_layer - 1) + ")");
    }

    GraphTrace trace(dir.temp_path(), n, filters);
    ContextSettings settings = single_batch_settings(n, config);
    settings.eval_callback = &GraphTrace::callback;
    settings.eval_user_data = &trace;
    OpenedContext context = open_context(model.get(), settings, config.kv);
    check_single_batch(context.report, n);
    clear_memory(context.ctx.get());
    try {
        decode(context.ctx.get(), tokens, 0, /*all_logits=*/true);
    } catch (const ShimError &) {
        trace.rethrow_if_failed();  // the callback's failure explains the decode's
        throw;
    }
    trace.rethrow_if_failed();

    const std::vector<float> logits = read_logits(context.ctx.get(), n, facts.n_vocab);
    uint64_t bytes_written = write_npy_f32(dir.temp_path() + "/logits.npy", logits.data(), n,
                                           static_cast<size_t>(facts.n_vocab));
    uint64_t tensor_bytes = 0;
    for (const TraceRecord * r : trace.kept()) {
        tensor_bytes += r->bytes;
    }
    bytes_written += tensor_bytes;
    {
        const std::string text = manifest_text(trace, path, facts, tokens, config, context);
        PendingFile manifest(dir.temp_path() + "/trace.json", "trace manifest");
        if (std::fwrite(text.data(), 1, text.size(), manifest.stream()) != text.size()) {
            throw ShimError(kExitOther, "cannot write " + manifest.temp_path());
        }
        manifest.commit();
        bytes_written += text.size();
    }
    dir.commit();

    JsonWriter json;
    json.begin_object();
    json.key("out_dir").value(dir.target());
    json.key("manifest").value("trace.json");
    json.key("logits").value("logits.npy");
    json.key("n_tokens").value(n);
    json.key("n_vocab").value(facts.n_vocab);
    json.key("positions").int_array(trace.filters().positions);
    write_filters(json, trace.filters());
    json.key("n_tensors").value(static_cast<int64_t>(trace.kept().size()));
    json.key("n_graph_nodes").value(trace.n_nodes());
    json.key("tensor_bytes").value(tensor_bytes);
    json.key("bytes_written").value(bytes_written);
    json.key("bytes_copied").value(trace.bytes_copied());
    json.key("n_nonfinite").value(count_nonfinite(logits));
    json.key("n_decode_calls").value(1);
    write_run_config(json, config, context);
    json.end_object();
    print_json(json);
    return kExitOk;
}

}  // namespace

const CommandSpec kTraceCommand = {
    "trace",
    "  trace      --model M (--tokens-file F | --tokens LIST) --out-dir DIR [--layers A-B]\n"
    "             [--names REGEX] [--positions LIST] [--threads N] [--kv-type auto|f32|f16] [--seed S]\n",
    {"model", "tokens-file", "tokens", "out-dir", "layers", "names", "positions", "threads", "kv-type", "seed"},
    run_trace,
};

}  // namespace shim
