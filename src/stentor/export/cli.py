"""`stentor quantize` and `stentor export gguf|onnx`: smaller CPU models and other runtimes' formats."""

from __future__ import annotations

import argparse
from pathlib import Path

from stentor.errors import StentorError
from stentor.export import GGUF_DTYPES, GROUP_SIZES, QUANT_METHODS, WEB_DTYPES


def _size(path: Path) -> str:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return f"{total / 2**20:.2f} MiB"


def _quantize(args: argparse.Namespace) -> int:
    from stentor.export.quantize import quantize_dir

    out = quantize_dir(args.model, args.output, args.method, args.group_size)
    print(f"wrote {out} ({args.method}, {_size(out / 'model.safetensors')}); load it with stentor.load (or stentor generate --model)")
    return 0


def _gguf(args: argparse.Namespace) -> int:
    from stentor.export.gguf import export_gguf

    out = export_gguf(args.model, args.output, args.dtype, args.tokenizer)
    print(f"wrote {out} ({args.dtype}, {_size(out)}); read back and verified every tensor and the vocabulary")
    return 0


def _onnx(args: argparse.Namespace) -> int:
    from stentor.export.onnx import export_onnx

    report = export_onnx(args.model, args.output, opset=args.opset)
    print(
        f"wrote {report.path} ({_size(report.path)}); onnxruntime logits within {report.max_abs_diff:.1e} of torch, "
        f"greedy decode of {report.greedy_tokens} tokens identical"
    )
    return 0


def _web(args: argparse.Namespace) -> int:
    from stentor.export.web import export_web

    report = export_web(args.model, args.output, args.dtype)
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    print(f"wrote {report.path}/ ({report.dtype}, {mib(report.total_bytes)}; a visitor downloads {mib(report.page_bytes)} "
          f"on WASM); onnxruntime logits within {report.max_abs_diff:.1e} of torch")
    if args.preview is None:
        print(f"try it: stentor export web --model {args.model} -o {args.output} --dtype {args.dtype} --preview "
              "(serves it on http://127.0.0.1:8080; docs/web.md: hosting)")
        return 0
    import time

    from stentor.export.web import preview_server

    with preview_server(report.path, args.preview) as url:
        print(f"serving {report.path} at {url}/ with the headers that give it threads; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    quant = sub.add_parser(
        "quantize",
        help="quantize a model's weights to int8 or int4 for faster, smaller CPU inference",
        formatter_class=fmt,
        description=(
            "Replace every Linear layer with a quantized one that runs on torch's native CPU kernels.\n\n"
            "  int8          weight-only int8, one scale per output channel (about 4x smaller weights)\n"
            "  int8-dynamic  int8 weights and per-token int8 activations (integer matmul)\n"
            "  int4          weight-only 4-bit in groups of --group-size input columns\n\n"
            "The tied embedding/lm_head matrix is stored once as int8 for every method.\n"
            "OUT loads with stentor.load(OUT) and `stentor generate --model OUT` (the decode engine runs it).\n\n"
            "example: stentor quantize --model runs/mini/final --method int8 -o runs/mini/int8"
        ),
    )
    quant.add_argument("--model", required=True, help="float model directory (config.json + model.safetensors)")
    quant.add_argument("--method", required=True, choices=QUANT_METHODS, help="quantization method (see above)")
    quant.add_argument("-o", "--output", required=True, help="output directory (replaced atomically)")
    quant.add_argument(
        "--group-size", type=int, choices=GROUP_SIZES, default=64, help="int4 group size (default 64)"
    )
    quant.set_defaults(func=_quantize)

    export = sub.add_parser(
        "export",
        help="export a model to GGUF (llama.cpp), ONNX (onnxruntime) or a web page, verified after writing",
        formatter_class=fmt,
        description="Write a model in another runtime's format, then read it back and check it.",
    )
    formats = export.add_subparsers(dest="format", metavar="<format>")
    export.set_defaults(func=lambda args: _missing_format(export))

    gguf = formats.add_parser(
        "gguf",
        help="one self-contained .gguf file for llama.cpp",
        formatter_class=fmt,
        description=(
            "Write llama.cpp's LLaMA layout (Q/K rows permuted to its RoPE layout) with the token list\n"
            "and the TokenMonster .vocab embedded. llama.cpp cannot tokenize TokenMonster text: tokenize\n"
            "with `stentor` and pass token ids (see docs/deployment.md).\n\n"
            "example: stentor export gguf --model runs/mini/final -o mini-q8_0.gguf --dtype q8_0"
        ),
    )
    gguf.add_argument("--model", required=True, help="float model directory with its tokenizer")
    gguf.add_argument("-o", "--output", required=True, help="output file, *.gguf")
    gguf.add_argument("--dtype", choices=GGUF_DTYPES, default="f16", help="2-D tensor type (norms stay f32; default f16)")
    gguf.add_argument("--tokenizer", help="tokenizer directory or .vocab when it is not in --model")
    gguf.set_defaults(func=_gguf)

    onnx = formats.add_parser(
        "onnx",
        help="an ONNX graph with KV-cache inputs/outputs for onnxruntime",
        formatter_class=fmt,
        description=(
            "Write OUTDIR/model.onnx with inputs input_ids, attention_mask, position_ids,\n"
            "past_key_values.N.key/value and outputs logits, present.N.key/value (dynamic batch and\n"
            "sequence axes), plus the model's config and tokenizer files. The export is checked with\n"
            "onnxruntime: logits against torch and a greedy decode loop against torch greedy.\n\n"
            "example: stentor export onnx --model runs/mini/final -o runs/mini/onnx"
        ),
    )
    onnx.add_argument("--model", required=True, help="float model directory")
    onnx.add_argument("-o", "--output", required=True, help="output directory (replaced atomically)")
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    onnx.set_defaults(func=_onnx)

    web = formats.add_parser(
        "web",
        help="a static folder that runs the model in a browser tab (no server): page + ONNX + onnxruntime-web",
        formatter_class=fmt,
        description=(
            "Write OUTDIR/index.html (the playground page of `stentor serve`), the model as ONNX with its\n"
            "KV cache, the tokenizer (TokenMonster in JavaScript, byte-exact with stentor's) and\n"
            "onnxruntime-web (WASM with SIMD, threads when the page is cross-origin isolated, WebGPU when\n"
            "the browser has it). Host OUTDIR on any static file host; it needs no network after loading.\n"
            "Scripts drive it with window.stentor.generate(prompt, {...}) and window.stentor.encode(text).\n\n"
            "onnxruntime-web is installed once with npm (from the npm registry) into a cache\n"
            "($STENTOR_WEB_CACHE, default ~/.cache/stentor/web).\n\n"
            "  --dtype fp32  the model as trained (about 4 bytes a parameter)\n"
            "  --dtype int8  int8 weights, one scale per output channel (as `stentor quantize --method int8`),\n"
            "                expanded to float32 in the page: a 4x smaller download at the float graph's speed\n\n"
            "example: stentor export web --model runs/mini/final -o site/ --dtype int8\n"
            "         stentor export web --model runs/mini/final -o site/ --preview   # http://127.0.0.1:8080"
        ),
    )
    web.add_argument("--model", required=True, help="float model directory with its Stentor tokenizer")
    web.add_argument("-o", "--output", required=True, help="output directory (replaced atomically)")
    web.add_argument("--dtype", choices=WEB_DTYPES, default="fp32", help="model weights (default fp32)")
    web.add_argument("--preview", type=int, metavar="PORT", nargs="?", const=8080,
                     help="then serve OUTDIR on 127.0.0.1:PORT (default 8080) until Ctrl-C, with the threads headers")
    web.set_defaults(func=_web)


def _missing_format(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    raise StentorError("choose a format: `stentor export gguf ...`, `stentor export onnx ...` or `stentor export web ...`")
