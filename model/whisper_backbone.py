"""The Whisper encoder as a backbone: waveforms -> log-mel -> conv front end -> every layer, summed.

Two input lengths (ModelConfig.whisper_input, docs/model.md):

- "30s": each segment's log-mel is padded to Whisper's 30 s window, as the
  encoder was pretrained, and the frames of the real audio are kept.
- "chunk": the encoder runs on the segment's own mel frames (rounded up to an
  even count for the stride-2 convolution), with the sinusoidal positions
  sliced to that length; a batch pads to its longest row and the attention
  masks the padding.

Either way a segment's features do not depend on what it is batched with, and
frames are 20 ms, like wav2vec 2.0's. transformers' WhisperEncoder.forward
insists on the 30 s input, so the conv front end, the positions and the layers
are called here directly.
"""
from __future__ import annotations

import contextlib
import typing

import torch
from torch import nn

from moodstream.model.config import WhisperInput

WHISPER_N_FFT = 400
WHISPER_HOP = 160
WHISPER_INPUTS = typing.get_args(WhisperInput)


def is_whisper_encoder(encoder: nn.Module) -> bool:
    return getattr(getattr(encoder, "config", None), "model_type", None) == "whisper" and hasattr(encoder, "conv1")


def whisper_encoder_from_config(hf_config) -> nn.Module:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder(hf_config)


def whisper_input_samples(config) -> int:
    """Samples Whisper's input is padded to (30 s at 16 kHz for every released model)."""
    return int(config.max_source_positions) * 2 * WHISPER_HOP


def whisper_mel_filters(config) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    filters = mel_filter_bank(num_frequency_bins=1 + WHISPER_N_FFT // 2, num_mel_filters=int(config.num_mel_bins),
                              min_frequency=0.0, max_frequency=8000.0, sampling_rate=16000,
                              norm="slaney", mel_scale="slaney")
    return torch.from_numpy(filters).to(torch.float32)  # [201, mels]


def _check_length(waveforms: torch.Tensor, config) -> None:
    total = whisper_input_samples(config)
    if waveforms.shape[1] > total:
        raise ValueError(f"a Whisper backbone takes at most {total / 16000:.0f} s per segment")


def _feature_extraction_precision(device: torch.device):
    # The log-mel is Whisper's feature extraction, fp32 in WhisperFeatureExtractor: under bf16/fp16
    # autocast the filter-bank matmul would otherwise round the power spectrum before the log.
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def whisper_log_mel(waveforms: torch.Tensor, mel_filters: torch.Tensor, config) -> torch.Tensor:
    """[B, T] 16 kHz waveforms -> [B, mels, 3000] log-mel, as WhisperFeatureExtractor computes it."""
    _check_length(waveforms, config)
    with _feature_extraction_precision(waveforms.device):
        total = whisper_input_samples(config)
        padded = nn.functional.pad(waveforms.to(torch.float32), (0, total - waveforms.shape[1]))
        window = torch.hann_window(WHISPER_N_FFT, device=padded.device)
        stft = torch.stft(padded, WHISPER_N_FFT, WHISPER_HOP, window=window, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()
        mel = mel_filters.to(padded.device).T @ power
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0


def whisper_chunk_log_mel(waveforms: torch.Tensor, mel_filters: torch.Tensor, config, mel_frames,
                          mel_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] waveforms (zero past each row's end) -> [B, mels, mel_frames] log-mel of the chunk's own frames.

    Each kept frame equals the 30 s input's frame at the same place: the waveform gets enough zeros that
    no kept frame's window reaches the STFT's reflected edge. `mel_mask` [B, mel_frames] marks each row's
    own frames: the peak (Whisper's 80 dB floor) is taken over them only, and the frames past a row's end
    are 0, the value the convolutions pad with, so a row reads the same alone as in a longer batch.
    """
    _check_length(waveforms, config)
    with _feature_extraction_precision(waveforms.device):
        samples = mel_frames * WHISPER_HOP
        waveforms = waveforms[:, :samples].to(torch.float32)
        padded = nn.functional.pad(waveforms, (0, samples + WHISPER_N_FFT // 2 - waveforms.shape[1]))
        window = torch.hann_window(WHISPER_N_FFT, device=padded.device)
        stft = torch.stft(padded, WHISPER_N_FFT, WHISPER_HOP, window=window, return_complex=True)
        power = (stft[..., :mel_frames].abs() ** 2).contiguous()
        mel = mel_filters.to(padded.device).T @ power
        log_spec = torch.clamp(mel, min=1e-10).log10()
        if mel_mask is None:
            peak = log_spec.amax(dim=(1, 2), keepdim=True)
        else:
            outside = ~mel_mask[:, None, :]
            peak = log_spec.masked_fill(outside, float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        return log_spec if mel_mask is None else log_spec.masked_fill(outside, 0.0)


def whisper_frame_lengths(sample_lengths: torch.Tensor, config) -> torch.Tensor:
    """Encoder frames (20 ms) that hold real audio: ceil(ceil(n / 160) / 2), at most 1500."""
    mel_frames = torch.div(sample_lengths + WHISPER_HOP - 1, WHISPER_HOP, rounding_mode="floor")
    frames = torch.div(mel_frames + 1, 2, rounding_mode="floor")
    return frames.clamp(min=1, max=int(config.max_source_positions)).to(torch.long)


def whisper_frame_count(samples):
    """whisper_frame_lengths for one length given as a (possibly symbolic) int: what an exported graph can hold."""
    return ((samples + WHISPER_HOP - 1) // WHISPER_HOP + 1) // 2


def summed_whisper_layers(encoder: nn.Module, mel: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """log-mel [B, mels, 2F] -> the sum of every layer's output [B, F, H].

    The last layer's output is taken after the encoder's final layer norm (the encoder's output), the
    earlier ones as they leave their layer.
    """
    hidden = nn.functional.gelu(encoder.conv1(mel))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    total = None
    for index, layer in enumerate(encoder.layers):
        output = layer(hidden, attention_mask)
        hidden = output[0] if isinstance(output, tuple) else output
        contribution = encoder.layer_norm(hidden) if index == len(encoder.layers) - 1 else hidden
        total = contribution if total is None else total + contribution
    return total


def padding_attention_mask(encoder: nn.Module, frame_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """frame_mask [B, F] -> the mask Whisper's attention takes that keeps every query off the padded keys."""
    if encoder.config._attn_implementation == "eager":  # eager adds the mask to the scores
        additive = torch.zeros(frame_mask.shape, dtype=dtype, device=frame_mask.device)
        return additive.masked_fill(~frame_mask, torch.finfo(dtype).min)[:, None, None, :]
    return frame_mask[:, None, None, :]  # SDPA: True attends


def whisper_features(encoder: nn.Module, mel_filters: torch.Tensor, waveforms: torch.Tensor,
                     sample_lengths: torch.Tensor, whisper_input: str) -> tuple[torch.Tensor, torch.Tensor]:
    """waveforms [B, T] (zero past each row's end), sample_lengths [B] -> (features [B, F, H], frame_mask [B, F])."""
    frame_lengths = whisper_frame_lengths(sample_lengths, encoder.config)
    frame_count = int(frame_lengths.max())
    frame_mask = torch.arange(frame_count, device=waveforms.device)[None, :] < frame_lengths[:, None]
    if whisper_input == "30s":
        total = summed_whisper_layers(encoder, whisper_log_mel(waveforms, mel_filters, encoder.config))
        return total[:, :frame_count], frame_mask
    mel = whisper_chunk_log_mel(waveforms, mel_filters, encoder.config, 2 * frame_count,
                                frame_mask.repeat_interleave(2, dim=1))
    padded = not bool(frame_mask.all())
    attention_mask = padding_attention_mask(encoder, frame_mask, mel.dtype) if padded else None
    return summed_whisper_layers(encoder, mel, attention_mask), frame_mask


def whisper_equal_length_features(encoder: nn.Module, mel_filters: torch.Tensor, waveforms: torch.Tensor,
                                  whisper_input: str) -> torch.Tensor:
    """whisper_features for rows that all fill the full width, with no data-dependent shapes (ONNX export)."""
    frame_count = whisper_frame_count(waveforms.shape[1])
    if whisper_input == "30s":
        mel = whisper_log_mel(waveforms, mel_filters, encoder.config)
    else:
        mel = whisper_chunk_log_mel(waveforms, mel_filters, encoder.config, 2 * frame_count)
    return summed_whisper_layers(encoder, mel)[:, :frame_count]
