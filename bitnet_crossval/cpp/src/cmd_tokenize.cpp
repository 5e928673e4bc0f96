// `tokenize` and `detokenize`: the vocabulary alone (the model is loaded vocabulary-only).
#include "commands.h"
#include "errors.h"
#include "files.h"
#include "json_writer.h"
#include "model.h"
#include "run_common.h"

namespace shim {

namespace {

int run_tokenize(const Options & opts) {
    const std::string & path = opts.required("model");
    const std::string & text_file = opts.required("text-file");
    const bool add_bos = opts.flag01("add-bos");
    const bool parse_special = opts.flag01("parse-special");
    const std::string text = read_input_file(text_file, "text file");
    ModelPtr model = load_model(path, /*vocab_only=*/true);
    const std::vector<int32_t> tokens = tokenize(model.get(), text, add_bos, parse_special);

    JsonWriter json;
    json.begin_object();
    json.key("tokens").int_array(tokens);
    json.key("n_tokens").value(static_cast<int64_t>(tokens.size()));
    write_pieces(json, model.get(), tokens, /*special=*/true);
    json.key("add_bos").value(add_bos);
    json.key("parse_special").value(parse_special);
    json.key("text_bytes").value(static_cast<int64_t>(text.size()));
    write_backend(json);
    json.end_object();
    print_json(json);
    return kExitOk;
}

int run_detokenize(const Options & opts) {
    const std::string & path = opts.required("model");
    const bool remove_special = opts.flag01("remove-special");
    const bool unparse_special = opts.flag01("unparse-special");
    const std::vector<int32_t> tokens = read_tokens(opts);
    ModelPtr model = load_model(path, /*vocab_only=*/true);
    check_token_ids(tokens, n_vocab(model.get()));
    const std::string text = detokenize(model.get(), tokens, remove_special, unparse_special);

    JsonWriter json;
    json.begin_object();
    json.key("tokens").int_array(tokens);
    write_pieces(json, model.get(), tokens, unparse_special);
    json.key("text").value(text);
    json.key("text_hex").value(to_hex(text));
    json.key("remove_special").value(remove_special);
    json.key("unparse_special").value(unparse_special);
    write_backend(json);
    json.end_object();
    print_json(json);
    return kExitOk;
}

}  // namespace

const CommandSpec kTokenizeCommand = {
    "tokenize",
    "  tokenize   --model M --text-file F --add-bos 0|1 --parse-special 0|1\n",
    {"model", "text-file", "add-bos", "parse-special"},
    run_tokenize,
};

const CommandSpec kDetokenizeCommand = {
    "detokenize",
    "  detokenize --model M (--tokens-file F | --tokens LIST) --remove-special 0|1 --unparse-special 0|1\n",
    {"model", "tokens-file", "tokens", "remove-special", "unparse-special"},
    run_detokenize,
};

}  // namespace shim
