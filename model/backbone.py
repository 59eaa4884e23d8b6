"""Upstream: a Hugging Face speech encoder turned into summed-layer frame features.

Any transformers audio encoder that takes raw waveforms and returns
`hidden_states` works (wav2vec 2.0, HuBERT, WavLM, data2vec-audio). The CNN
feature encoder is always frozen; the transformer layers follow the
fine-tuning strategy. Frame features are the sum of the outputs of all
transformer layers (hidden_states[1:], not the CNN/embedding output).

A Whisper encoder (log-mel input) is supported too, in its own module
(moodstream.model.whisper_backbone): the waveform becomes Whisper's 80-bin
log-mel spectrogram, padded to 30 s as the encoder was pretrained or kept at
the chunk's own length (ModelConfig.whisper_input), and the frames of the
real audio are kept (20 ms each, like wav2vec 2.0).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moodstream.model.errors import BackboneUnavailableError
from moodstream.model.whisper_backbone import (  # noqa: F401  (whisper_log_mel: the tests' reference)
    WHISPER_INPUTS, is_whisper_encoder, whisper_encoder_from_config, whisper_equal_length_features, whisper_features,
    whisper_frame_lengths, whisper_log_mel, whisper_mel_filters)

# How long the hub may take to answer before a backbone that is not cached is reported unavailable.
HUB_PROBE_SECONDS = 3.0


def build_backbone_module(backbone: str, backbone_config: dict[str, Any] | None,
                          load_pretrained: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Return (transformers model, its config as a dict).

    With `backbone_config` the model is built randomly initialised from it
    (checkpoints overwrite the weights right after). Otherwise `backbone` is a
    hub id or a local folder, and its pretrained weights are loaded when
    `load_pretrained` is set.
    """
    import transformers

    if backbone_config is not None and not load_pretrained:
        values = dict(backbone_config)
        model_type = values.pop("model_type", None)
        if model_type is None:
            raise ValueError("invalid model config: backbone_config needs a 'model_type' (e.g. 'wav2vec2')")
        try:
            hf_config = transformers.AutoConfig.for_model(model_type, **values)
        except (ValueError, KeyError) as error:
            raise ValueError(f"invalid model config: backbone_config is not a transformers config: {error}") from error
        if model_type == "whisper":
            module = whisper_encoder_from_config(hf_config)
        else:
            module = transformers.AutoModel.from_config(hf_config)
        return module, portable_config(hf_config)

    local = Path(backbone).expanduser()
    source = str(local) if local.exists() else backbone
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")

    def load(local_files_only: bool):
        if load_pretrained:
            return transformers.AutoModel.from_pretrained(source, local_files_only=local_files_only)
        return transformers.AutoModel.from_config(
            transformers.AutoConfig.from_pretrained(source, local_files_only=local_files_only))

    unreachable = None
    try:
        try:
            # The local cache first: no network round trips when it is there.
            module = load(local_files_only=True)
        except (OSError, ValueError):
            if offline or local.exists():
                raise
            unreachable = hub_unreachable(backbone)
            if unreachable is not None:
                raise
            module = load(local_files_only=False)
    except (OSError, ValueError) as error:
        if local.exists():
            hint = f"the folder {local} does not hold a transformers model (config.json + weights)"
        else:
            hint = (f"'{backbone}' is neither a local folder nor in the Hugging Face cache"
                    + (f", and the hub cannot be reached ({unreachable})" if unreachable else "")
                    + "; download it on a connected machine (e.g. `hf download "
                    f"{backbone}`) and copy the cache, or pass the folder it is in")
        raise BackboneUnavailableError(f"cannot load backbone: {hint}.") from error
    if getattr(module.config, "model_type", None) == "whisper" and hasattr(module, "get_encoder"):
        module = module.get_encoder()  # only the audio encoder of an encoder-decoder Whisper model
    return module, portable_config(module.config)


def hub_unreachable(repo_id: str) -> str | None:
    """Why the Hugging Face hub cannot be asked for `repo_id` now, in a few words; None when it answers.

    One request, no retries: after a failed request huggingface_hub retries with backoff for about 25 s, which
    without a network only delays the same error.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=HUB_PROBE_SECONDS)
    except (HfHubHTTPError, HFValidationError):
        return None  # the hub answered (or the id is malformed): the download says what is wrong
    except Exception as error:  # a connection that failed or timed out, however the HTTP client words it
        reason = " ".join(str(error).split()) or type(error).__name__
        return f"{constants.ENDPOINT}: {reason}"
    return None


def portable_config(hf_config) -> dict[str, Any]:
    """The config without fields that name a machine or a library release, so model_version is stable."""
    values = hf_config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "_commit_hash", "dtype", "torch_dtype"):
        values.pop(volatile, None)
    return values


class Backbone(nn.Module):
    """Wraps the encoder: waveforms -> summed transformer-layer frame features + frame mask."""

    def __init__(self, encoder: nn.Module, fine_tuning: str = "all", fine_tune_last_n: int = 1,
                 normalize_waveform: bool = True, whisper_input: str = "30s") -> None:
        super().__init__()
        if whisper_input not in WHISPER_INPUTS:
            raise ValueError(f"whisper_input must be one of {WHISPER_INPUTS}, got {whisper_input!r}")
        self.encoder = encoder
        self.normalize_waveform = normalize_waveform
        self.is_whisper = is_whisper_encoder(encoder)
        # The Whisper encoder's input length; wav2vec2-family encoders always run on the segment's own samples.
        self.whisper_input = whisper_input
        if self.is_whisper:
            self.register_buffer("whisper_mel_filters", whisper_mel_filters(encoder.config), persistent=False)
        elif not hasattr(encoder, "feature_extractor") or not hasattr(encoder, "encoder"):
            raise ValueError(
                f"unsupported backbone {type(encoder).__name__}: need a raw-waveform encoder with a CNN "
                "feature extractor and transformer layers (wav2vec2, hubert, wavlm, data2vec-audio)")
        self.fine_tuning = fine_tuning
        self.fine_tune_last_n = fine_tune_last_n
        self.apply_fine_tuning_strategy()

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def transformer_layers(self) -> nn.ModuleList:
        if self.is_whisper:
            return self.encoder.layers
        return self.encoder.encoder.layers

    @property
    def feature_encoder(self) -> nn.Module:
        """The CNN that turns samples into 20 ms frames; never trained."""
        if self.is_whisper:
            return nn.ModuleList([self.encoder.conv1, self.encoder.conv2])
        return self.encoder.feature_extractor

    def apply_fine_tuning_strategy(self) -> None:
        strategy, last_n = self.fine_tuning, self.fine_tune_last_n
        layers = self.transformer_layers
        if strategy == "last-n" and last_n > len(layers):
            raise ValueError(f"fine_tune_last_n={last_n} but the backbone has only {len(layers)} layers")
        for parameter in self.encoder.parameters():
            parameter.requires_grad = strategy == "all"
        if strategy == "last-n":
            for layer in layers[len(layers) - last_n:]:
                for parameter in layer.parameters():
                    parameter.requires_grad = True
            final_norm = getattr(self.encoder if self.is_whisper else self.encoder.encoder, "layer_norm", None)
            if final_norm is not None and (self.is_whisper
                                           or getattr(self.encoder.config, "do_stable_layer_norm", False)):
                # In pre-norm models the last layer's output passes this norm.
                for parameter in final_norm.parameters():
                    parameter.requires_grad = True
        for parameter in self.feature_encoder.parameters():
            parameter.requires_grad = False
        if hasattr(self.encoder, "freeze_feature_encoder"):
            # Without this, wav2vec2's CNN marks its input as requiring grad in train() and builds a
            # gradient graph through the frozen convolutions on every step.
            self.encoder.freeze_feature_encoder()
        if self.is_whisper:  # Whisper's sinusoidal positions are fixed, as in pretraining
            self.encoder.embed_positions.weight.requires_grad = False
        # The masked-span embedding is only for self-supervised pretraining.
        masked_spec_embed = getattr(self.encoder, "masked_spec_embed", None)
        if masked_spec_embed is not None:
            masked_spec_embed.requires_grad = False

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        if self.is_whisper:
            return whisper_frame_lengths(sample_lengths, self.encoder.config)
        return self.encoder._get_feat_extract_output_lengths(sample_lengths).to(torch.long)

    def forward(self, waveforms: torch.Tensor, sample_lengths: torch.Tensor):
        """waveforms [B, T] zero-padded, sample_lengths [B] -> (features [B, F, H], frame_mask [B, F] bool).

        A segment's features do not depend on what it is batched with: the CNN
        runs on each distinct length without padding (its group norm would
        otherwise see the padding), and the transformer gets the frame mask.
        """
        batch, total = waveforms.shape
        sample_mask = torch.arange(total, device=waveforms.device)[None, :] < sample_lengths[:, None]
        if self.normalize_waveform:
            waveforms = normalize_per_segment(waveforms, sample_mask, sample_lengths)
        if self.is_whisper:
            return whisper_features(self.encoder, self.whisper_mel_filters, waveforms * sample_mask.to(waveforms.dtype),
                                    sample_lengths, self.whisper_input)
        frame_lengths = self.frame_lengths(sample_lengths)
        frame_count = int(frame_lengths.max())
        cnn_features = None
        for length in torch.unique(sample_lengths).tolist():
            rows = (sample_lengths == length).nonzero(as_tuple=True)[0]
            extracted = self.feature_encoder(waveforms[rows, :length]).transpose(1, 2)
            if cnn_features is None:
                cnn_features = extracted.new_zeros(batch, frame_count, extracted.shape[2])
            cnn_features[rows, : extracted.shape[1]] = extracted
        frame_mask = torch.arange(frame_count, device=waveforms.device)[None, :] < frame_lengths[:, None]
        return self.summed_layers(cnn_features, frame_mask, padded=not bool(frame_mask.all())), frame_mask

    def equal_length_forward(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward() for a batch whose segments all fill the full width (no padding, no data-dependent
        shapes): what an exported graph (bench/encoder.py, ONNX) can hold."""
        batch, total = waveforms.shape
        if self.normalize_waveform:
            lengths = torch.full((batch,), total, dtype=torch.long, device=waveforms.device)
            waveforms = normalize_per_segment(waveforms, torch.ones_like(waveforms, dtype=torch.bool), lengths)
        if self.is_whisper:
            features = whisper_equal_length_features(self.encoder, self.whisper_mel_filters, waveforms,
                                                     self.whisper_input)
            return features, torch.ones(features.shape[:2], dtype=torch.bool, device=waveforms.device)
        cnn_features = self.feature_encoder(waveforms).transpose(1, 2)
        frame_mask = torch.ones(cnn_features.shape[:2], dtype=torch.bool, device=waveforms.device)
        return self.summed_layers(cnn_features, frame_mask, padded=False), frame_mask

    def summed_layers(self, cnn_features: torch.Tensor, frame_mask: torch.Tensor, padded: bool) -> torch.Tensor:
        """CNN features [B, F, C] -> the sum of every transformer layer's output [B, F, H]."""
        hidden = self.encoder.feature_projection(cnn_features)
        if isinstance(hidden, tuple):  # wav2vec2 also returns the normalised CNN features
            hidden = hidden[0]
        if self.training:
            hidden = self.encoder._mask_hidden_states(hidden, attention_mask=frame_mask)
        layer_outputs: list[torch.Tensor] = []
        caller = threading.get_ident()

        def record(_module, _inputs, output):
            # Hooks live on the shared layers: keep only this call's outputs when another thread
            # runs the same model at the same time (two servers or encoders sharing one model).
            if threading.get_ident() == caller:
                layer_outputs.append(output[0] if isinstance(output, tuple) else output)

        hooks = [layer.register_forward_hook(record) for layer in self.transformer_layers]
        try:
            self.encoder.encoder(hidden, attention_mask=frame_mask if padded else None)
        finally:
            for hook in hooks:
                hook.remove()
        # The paper's frame features: the sum of every transformer layer's output.
        return torch.stack(layer_outputs, dim=0).sum(dim=0)


def normalize_per_segment(waveforms: torch.Tensor, sample_mask: torch.Tensor,
                          sample_lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over each segment's real samples (as Wav2Vec2FeatureExtractor does)."""
    mask = sample_mask.to(waveforms.dtype)
    count = sample_lengths.clamp(min=1).to(waveforms.dtype)[:, None]
    mean = (waveforms * mask).sum(dim=1, keepdim=True) / count
    centred = (waveforms - mean) * mask
    variance = (centred ** 2).sum(dim=1, keepdim=True) / count
    return centred / torch.sqrt(variance + 1e-7)
