"""`stentor export web`: the model, its tokenizer and the playground page as one static folder.

The folder runs the model in the visitor's browser tab with no server behind it:

    OUT/index.html            the playground page of `stentor serve`, with the in-browser backend
    OUT/playground/           the page's JS/CSS (shared with the server's page), config.json
    OUT/model/                model.onnx (the graph, KV cache), weights.bin (float32, or int8 with scales),
                              the tokenizer files, unicode.json
    OUT/ort/                  onnxruntime-web (pinned in npm/package-lock.json): WASM, and WebGPU when present

onnxruntime-web comes from the npm registry through `npm ci` into a cache, once; the page itself
never reaches the network beyond the host that serves OUT.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stentor.errors import StentorError
from stentor.export import WEB_DTYPES
from stentor.fileio import atomic_dir

# The runtime's files by backend: the page loads one set, the WebGPU one only where the browser has WebGPU.
RUNTIME_FILES = {
    "wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
}
PAGE_FILES = ("playground.js", "playground.css", "local.js", "sampling.js", "tokenmonster.js")
# What the page's tokenizer and sampler read; the tokenizer's Python code is of no use in a browser.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.vocab", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")  # fmt: skip
# Cross-origin isolation gives the page SharedArrayBuffer, hence WASM threads; `_headers` sets it on
# Netlify and Cloudflare Pages, `preview_server` locally (docs/web.md has nginx and others).
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
_LOCAL_SCRIPT = '<script type="module" src="playground/local.js"></script>\n'
_PAGE_SCRIPT = '<script src="playground/playground.js" defer></script>'


def _manifest(name: str) -> bytes:
    return resources.files("stentor.export").joinpath("npm", name).read_bytes()


def runtime_version() -> str:
    return json.loads(_manifest("package.json"))["dependencies"]["onnxruntime-web"]


def runtime_cache() -> Path:
    """Where the npm install lives: $STENTOR_WEB_CACHE, else the user's cache folder."""
    base = os.environ.get("STENTOR_WEB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stentor" / "web"
    return Path(base) / f"onnxruntime-web-{runtime_version()}"


def web_runtime() -> Path:
    """The pinned onnxruntime-web `dist` folder, installed with `npm ci` into the cache on first use.

    `npm ci` installs exactly the lockfile (checking every package's integrity hash) and runs no
    install scripts; the install goes to a temporary folder first, so an interrupted one is never used.
    """
    root = runtime_cache()
    dist = root / "node_modules" / "onnxruntime-web" / "dist"
    wanted = [name for files in RUNTIME_FILES.values() for name in files]
    lock = _manifest("package-lock.json")
    if all((dist / name).is_file() for name in wanted) and (root / "package-lock.json").read_bytes() == lock:
        return dist
    npm = shutil.which("npm")
    version = runtime_version()
    if npm is None:
        raise StentorError(f"`stentor export web` needs npm once, to fetch onnxruntime-web {version} from the npm "
                           f"registry into {root}: install Node.js with npm (e.g. apt-get install npm)")  # fmt: skip
    with atomic_dir(root) as tmp:
        (tmp / "package.json").write_bytes(_manifest("package.json"))
        (tmp / "package-lock.json").write_bytes(lock)
        done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=tmp,
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise StentorError(f"npm could not install onnxruntime-web {version} (is the npm registry reachable?): {last}")
        missing = [name for name in wanted if not (tmp / "node_modules/onnxruntime-web/dist" / name).is_file()]
        if missing:
            raise StentorError(f"onnxruntime-web {version} from npm lacks {', '.join(missing)}; please report")
    return dist


def chat_format(codec) -> dict | None:
    """The chat template as per-role text around each message plus the generation prompt, for the page.

    The page has no Jinja; a template that renders each message on its own (as the card's does)
    becomes plain strings. One that does more (a system default, cross-message logic) gives None,
    and the page's Chat tab says the model has none.
    """
    if not codec.chat_template:
        return None
    try:
        return _flat_chat_format(codec)
    except Exception:  # noqa: BLE001 - a template that raises on these probes (e.g. no system role) has no flat form
        return None


def _flat_chat_format(codec) -> dict | None:
    mark = "\x00MESSAGE\x00"
    roles = {}
    for role in ("system", "user", "assistant"):
        text = codec.apply_chat_template([{"role": role, "content": mark}], add_generation_prompt=False)
        if text.count(mark) != 1:
            return None
        before, after = text.split(mark)
        roles[role] = {"prefix": before, "suffix": after}
    probe = [{"role": "user", "content": "a"}]
    bare = codec.apply_chat_template(probe, add_generation_prompt=False)
    prompted = codec.apply_chat_template(probe, add_generation_prompt=True)
    if not prompted.startswith(bare):
        return None
    fmt = {"roles": roles, "generation_prompt": prompted[len(bare):]}
    conversation = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                    {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]  # fmt: skip
    flat = "".join(roles[m["role"]]["prefix"] + m["content"] + roles[m["role"]]["suffix"] for m in conversation)
    if codec.apply_chat_template(conversation, add_generation_prompt=True) != flat + fmt["generation_prompt"]:
        return None
    return fmt


def _generation_defaults(model_dir: Path) -> dict:
    """The card's sampling defaults, overridden by the model dir's generation_config.json where it sets them."""
    from stentor.fileio import read_json
    from stentor.model.presets import MAX_NEW_TOKENS_DEFAULT, SAMPLING_DEFAULTS

    defaults = {**SAMPLING_DEFAULTS, "max_tokens": MAX_NEW_TOKENS_DEFAULT}
    path = model_dir / "generation_config.json"
    saved = read_json(path) if path.is_file() else {}
    for key in ("temperature", "top_p", "repetition_penalty"):
        if isinstance(saved.get(key), (int, float)) and not isinstance(saved.get(key), bool):
            defaults[key] = saved[key]
    if isinstance(saved.get("max_new_tokens"), int):
        defaults["max_tokens"] = saved["max_new_tokens"]
    return defaults


def _check_tokenizer(model_dir: Path) -> None:
    """One line when the page's tokenizer cannot read this directory's."""
    from stentor.fileio import read_json
    from stentor.tokenizer.foreign import foreign_vocab

    config_path = model_dir / "tokenizer_config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    if config.get("tokenizer_class") == "StentorTokenizer" and (model_dir / "tokenizer.vocab").is_file():
        return
    if config_path.is_file() and foreign_vocab(model_dir) is not None:
        raise StentorError(f"{model_dir} is a released checkpoint with a TokenMonster adapter; run "
                           f"`stentor convert {model_dir} -o DIR` and export DIR")  # fmt: skip
    raise StentorError(f"{model_dir} has no Stentor tokenizer (tokenizer.vocab + StentorTokenizer config); the page "
                       "tokenizes with TokenMonster only: save one with `stentor init --tokenizer` or `stentor convert`")  # fmt: skip


@dataclass
class WebReport:
    path: Path
    dtype: str
    total_bytes: int  # everything in OUT
    page_bytes: int  # what a visitor downloads on the WASM backend: page + runtime + model
    max_abs_diff: float  # onnxruntime's logits against torch with the same weights (int8: the dequantized ones)


WEIGHTS_FILE = "weights.bin"
WEIGHTS_LOCATION = "model.weights"  # the name the graph's external data refers to; the page builds it in memory


def split_weights(onnx_path: Path, dtype: str) -> tuple[bytes, dict]:
    """Move the graph's large float tensors out of `onnx_path` (rewritten in place, referring to external
    data at WEIGHTS_LOCATION) into (the weights file, its manifest), which the page turns back into floats.

    int8 keeps one int8 row per output channel and its scale, as `stentor quantize --method int8` does
    (`int8_rows`): the page expands them to float32 once, so the download is 4x smaller while decoding runs
    the float graph. The tied output matrix is not stored at all: the page transposes the embedding.
    """
    import numpy as np
    import onnx
    import torch
    from onnx import external_data_helper, numpy_helper

    from stentor.model.quantized import int8_rows

    proto = onnx.load(os.fspath(onnx_path))
    matmul = {n.input[1] for n in proto.graph.node if n.op_type == "MatMul"}
    gather = {n.input[0] for n in proto.graph.node if n.op_type == "Gather"}
    tables: dict[str, np.ndarray] = {}
    blobs: list[bytes] = []
    tensors: list[dict] = []
    offset = at = 0
    for init in proto.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < 1024:
            continue  # small tensors stay inside the graph
        w = numpy_helper.to_array(init)
        entry = {"name": init.name, "shape": list(w.shape), "offset": offset}
        tie = next((name for name, t in tables.items() if init.name in matmul and np.array_equal(t.T, w)), None)
        if tie is not None:
            entry.update(kind="transpose", of=tie)
        elif dtype == "int8" and w.ndim == 2 and (init.name in matmul or init.name in gather):
            # a MatMul weight is [in, out]: its output channels are columns, stored as rows here
            q, scales = int8_rows(torch.from_numpy(np.array(w.T if init.name in matmul else w)))
            pad = -q.numel() % 4  # keeps every float32 array 4-byte aligned for the page's typed-array views
            entry.update(kind="int8_columns" if init.name in matmul else "int8_rows", at=at, scales_at=at + q.numel() + pad)
            blobs += [q.numpy().tobytes(), b"\0" * pad, scales.numpy().astype("<f4").tobytes()]
            at += q.numel() + pad + 4 * scales.numel()
        else:
            entry.update(kind="float32", at=at)
            blobs.append(w.astype("<f4").tobytes())
            at += w.nbytes
        if init.name in gather:
            tables[init.name] = w
        tensors.append(entry)
        init.CopyFrom(numpy_helper.from_array(w, init.name))  # raw_data, whichever field the exporter filled
        external_data_helper.set_external_data(init, location=WEIGHTS_LOCATION, offset=offset, length=w.nbytes)
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        offset += w.nbytes
    onnx.save(proto, os.fspath(onnx_path))
    return b"".join(blobs), {"location": WEIGHTS_LOCATION, "bytes": offset, "tensors": tensors}


def assemble_weights(blob: bytes, manifest: dict) -> bytes:
    """The float32 external data the graph refers to, from the weights file: what local.js computes."""
    import numpy as np

    out = np.zeros(manifest["bytes"] // 4, dtype="<f4")
    views: dict[str, np.ndarray] = {}
    for t in manifest["tensors"]:
        rows, cols = (t["shape"] + [1])[:2] if len(t["shape"]) == 1 else t["shape"]
        dst = out[t["offset"] // 4 : t["offset"] // 4 + rows * cols].reshape(rows, cols)
        if t["kind"] == "float32":
            dst[:] = np.frombuffer(blob, "<f4", rows * cols, t["at"]).reshape(rows, cols)
        elif t["kind"] == "transpose":
            dst[:] = views[t["of"]].T
        else:
            channels = rows if t["kind"] == "int8_rows" else cols
            q = np.frombuffer(blob, np.int8, rows * cols, t["at"]).reshape(channels, -1).astype(np.float32)
            scales = np.frombuffer(blob, "<f4", channels, t["scales_at"])
            values = q * scales[:, None]
            dst[:] = values if t["kind"] == "int8_rows" else values.T
        views[t["name"]] = dst
    return out.tobytes()


def dequantized_int8(model):
    """`model` with every matrix replaced by its int8-rows round trip (the tied one once): what the page runs."""
    import torch

    from stentor.model.quantized import int8_rows

    with torch.no_grad():
        for weight in {id(m.weight): m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}.values():
            q, scales = int8_rows(weight)
            weight.copy_(q.float() * scales[:, None])
    return model


def _check_web_model(graph: Path, blob: bytes, manifest: dict, model, dtype: str) -> float:
    """Run the graph on onnxruntime with the weights the page will build; against torch with the same weights
    (for int8: the dequantized ones). Returns the largest logit difference; raises if the decode diverges."""
    import copy
    import tempfile

    from stentor.export.onnx import verify_onnx

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(graph, Path(tmp) / graph.name)
        (Path(tmp) / WEIGHTS_LOCATION).write_bytes(assemble_weights(blob, manifest))
        if dtype == "int8":
            model = dequantized_int8(copy.deepcopy(model))
        return verify_onnx(Path(tmp) / graph.name, model).max_abs_diff


def _page_config(model_dir: Path, model, codec, dtype: str, files: dict) -> dict:
    from stentor.infer.playground import page_config

    config = model.config
    context = config.max_position_embeddings
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    fmt = chat_format(codec)
    page = page_config(config.to_dict(), model_dir.name, vocab_size=config.vocab_size, context=context,
                       chat=fmt is not None, max_tokens=context - 1, max_prompt_tokens=context - 1)  # fmt: skip
    page["defaults"] = _generation_defaults(model_dir)
    page["defaults"]["max_tokens"] = min(page["defaults"]["max_tokens"], context - 1)
    page["local"] = {
        "dtype": dtype,
        "runtime": f"onnxruntime-web {runtime_version()}",
        "files": files,  # path -> bytes: the page checks each download's length against it
        "layers": config.num_hidden_layers,
        "kv_heads": config.num_key_value_heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        "eos_token_ids": sorted({int(i) for i in [*eos, codec.eos_token_id] if i is not None}),
        "chat_format": fmt,
    }
    return page


def export_web(model_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "fp32") -> WebReport:
    """Write the static folder (layout in the module docstring); the ONNX graph is checked on onnxruntime."""
    from stentor.export.onnx import MODEL_FILE, load_exportable, write_onnx
    from stentor.tokenizer.codec import TextCodec
    from stentor.tokenizer.jstables import unicode_tables_json

    if dtype not in WEB_DTYPES:
        raise StentorError(f"--dtype {dtype!r} is not one of {', '.join(WEB_DTYPES)}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise StentorError(f"{model_dir} is not a model directory (no config.json)")
    _check_tokenizer(model_dir)
    runtime = web_runtime()  # before the slow part: a missing npm is said at once
    model = load_exportable(model_dir, out_dir)
    codec = TextCodec.from_dir(model_dir)
    page_src = resources.files("stentor.infer").joinpath("web")
    with atomic_dir(out_dir) as tmp:
        (tmp / "model").mkdir()
        (tmp / "playground").mkdir()
        (tmp / "ort").mkdir()
        onnx_path = tmp / "model" / MODEL_FILE
        write_onnx(model, onnx_path)
        blob, weights = split_weights(onnx_path, dtype)
        (tmp / "model" / WEIGHTS_FILE).write_bytes(blob)
        diff = _check_web_model(onnx_path, blob, weights, model, dtype)
        for name in MODEL_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / "model" / name)
        (tmp / "model" / "unicode.json").write_text(unicode_tables_json(), encoding="utf-8")
        for name in PAGE_FILES:
            (tmp / "playground" / name).write_bytes(page_src.joinpath(name).read_bytes())
        for name in (n for files in RUNTIME_FILES.values() for n in files):
            shutil.copy2(runtime / name, tmp / "ort" / name)
        html = page_src.joinpath("index.html").read_text(encoding="utf-8")
        if _PAGE_SCRIPT not in html:
            raise StentorError("the playground page lost its script tag; please report")
        (tmp / "index.html").write_text(html.replace(_PAGE_SCRIPT, _LOCAL_SCRIPT + _PAGE_SCRIPT), encoding="utf-8")
        (tmp / "_headers").write_text("/*\n" + "".join(f"  {k}: {v}\n" for k, v in ISOLATION_HEADERS.items()))
        files = {f"model/{f.name}": f.stat().st_size for f in sorted((tmp / "model").iterdir())}
        config = _page_config(model_dir, model, codec, dtype, files)
        config["local"]["weights"] = weights
        (tmp / "playground" / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        sizes = {f.relative_to(tmp).as_posix(): f.stat().st_size for f in tmp.rglob("*") if f.is_file()}
    webgpu_only = {f"ort/{name}" for name in RUNTIME_FILES["webgpu"]}
    page_bytes = sum(size for name, size in sizes.items() if name not in webgpu_only)
    return WebReport(out_dir, dtype, sum(sizes.values()), page_bytes, diff)


class PreviewFiles(http.server.SimpleHTTPRequestHandler):
    """A static file host that sends the isolation headers (so the page gets threads) and logs nothing."""

    def end_headers(self):
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def preview_server(root: str | os.PathLike, port: int = 0, handler: type = PreviewFiles):
    """Serve `root` on 127.0.0.1:`port` (0: a free one) from a thread; yields the base URL."""
    if not (Path(root) / "index.html").is_file():
        raise StentorError(f"{root} has no index.html; pass a folder written by `stentor export web`")
    try:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=os.fspath(root)))
    except OSError as exc:
        raise StentorError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; pick another --preview port") from None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
