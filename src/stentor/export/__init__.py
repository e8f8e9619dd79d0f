"""Deployment: int8/int4 CPU quantization, GGUF (llama.cpp), ONNX (onnxruntime) and web-page export.

    from stentor.export import quantize_dir, load_quantized, export_gguf, export_onnx
    quantize_dir("runs/mini/final", "runs/mini/int8", "int8")
    model = load_quantized("runs/mini/int8")  # a transformers LlamaForCausalLM

Names are imported on first use so that `stentor --help` does not pay for torch; the option
lists below are plain data for the same reason (the CLI builds its choices from them).
"""

from stentor.lazy import lazy_exports
from stentor.model.quant_format import GROUP_SIZES, QUANT_METHODS

GGUF_DTYPES = ("f32", "f16", "q8_0")
WEB_DTYPES = ("fp32", "int8")

_EXPORTS = {
    "QuantConfig": "stentor.model.quant_format",
    "quantize_model": "stentor.export.quantize",
    "quantize_dir": "stentor.export.quantize",
    "save_quantized": "stentor.export.quantize",
    "load_quantized": "stentor.model.quantized",
    "is_quantized_dir": "stentor.model.quant_format",
    "export_gguf": "stentor.export.gguf",
    "write_gguf": "stentor.export.gguf",
    "read_gguf": "stentor.export.gguf",
    "verify_gguf": "stentor.export.gguf",
    "export_onnx": "stentor.export.onnx",
    "export_web": "stentor.export.web",
}
__all__ = sorted([*_EXPORTS, "GGUF_DTYPES", "GROUP_SIZES", "QUANT_METHODS", "WEB_DTYPES"])
__getattr__ = lazy_exports(__name__, _EXPORTS)
