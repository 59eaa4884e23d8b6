"""What one more model version costs a server that holds several (`moodstream server --models DIR`).

    python bench/model_versions.py [--size base|tiny]

Three random-weight checkpoints of the same shape (wav2vec2-base by default): `first`; `retrained`,
first's encoder with another session head (what session-head retraining writes); and `other`, a
different encoder. They are added to one model folder in that order and loaded by the server's own
ModelRepository (fp32, batch 1, so no precision is measured). After each, this process's resident
memory and the bytes of distinct weight tensors the repository holds are read. The baseline is
the first version, measured in the same run: each extra version is reported as a share of it.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, markdown_table, rss_mb  # noqa: E402


def build(size: str, seed: int):
    import torch

    from moodstream.model import ModelConfig, ScreeningModel

    torch.manual_seed(seed)
    if size == "tiny":
        return ScreeningModel(ModelConfig.tiny()).eval()
    return ScreeningModel(ModelConfig(backbone="wav2vec2-base-shape", backbone_config={"model_type": "wav2vec2"})).eval()


def with_other_session_head(model, seed: int):
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.session_head.parameters():
            parameter.normal_(0.0, 0.05)
    return model


def weight_megabytes(repository) -> float:
    """Bytes of the distinct tensors behind every held version (a shared tensor counts once)."""
    seen, total = set(), 0
    for served in repository.versions.values():
        for tensor in [*served.model.parameters(), *served.model.buffers()]:
            key = (tensor.untyped_storage().data_ptr(), tensor.device)
            if key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total / 2**20


def settled_rss() -> float:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS shows what is held
    except OSError:
        pass
    return rss_mb()


async def measure(size: str, folder: Path) -> dict:
    import redis.asyncio as aioredis

    from moodstream.server.encoder import BatchingEncoder
    from moodstream.server.model_repository import ModelRepository
    from moodstream.server.store import SessionStore

    client = aioredis.Redis()  # never connected: the stores are not used here
    repository = ModelRepository(make_encoder=lambda model: BatchingEncoder(model, 1, 5.0, "fp32"),
                                 make_store=lambda version: SessionStore(client, model_version=version),
                                 folder=folder, poll_seconds=3600)
    rows = []
    empty = settled_rss()
    first = build(size, 0)
    first.save_pretrained(folder / "first")
    with_other_session_head(first, 1).save_pretrained(folder / "retrained")
    del first
    staged = folder.parent / "staged"
    build(size, 2).save_pretrained(staged / "other")
    hidden = folder / ".hidden"
    hidden.mkdir()
    for name in ("retrained",):
        (folder / name).rename(hidden / name)
    gc.collect()
    baseline_rss = settled_rss()
    await repository.start()
    previous_rss, previous_weights = settled_rss(), weight_megabytes(repository)
    rows.append({"version": "first (baseline)", "encoder": "own", "rss_mb": previous_rss - baseline_rss,
                 "weights_mb": previous_weights})
    for name, source, encoder in (("retrained", hidden / "retrained", "shared with first"),
                                  ("other", staged / "other", "own")):
        source.rename(folder / name)
        await repository.refresh()
        rss, weights = settled_rss(), weight_megabytes(repository)
        rows.append({"version": name, "encoder": encoder, "rss_mb": rss - previous_rss,
                     "weights_mb": weights - previous_weights})
        previous_rss, previous_weights = rss, weights
    held = len(repository.versions)
    encoders = len(repository.encoders())
    await repository.stop()
    base = rows[0]
    for row in rows:
        row["rss_share_of_first"] = row["rss_mb"] / base["rss_mb"]
        row["weights_share_of_first"] = row["weights_mb"] / base["weights_mb"]
    return {"size": size, "versions_held": held, "encoders_loaded": encoders, "rss_before_mb": empty,
            "rows": rows, "machine": machine()}


def table(result: dict) -> str:
    return markdown_table(
        ["version added", "encoder", "resident MB added", "share of the first", "weight MB added",
         "share of the first"],
        [[r["version"], r["encoder"], r["rss_mb"], r["rss_share_of_first"], r["weights_mb"],
          r["weights_share_of_first"]] for r in result["rows"]])


def run(size: str = "base") -> dict:
    with tempfile.TemporaryDirectory(prefix="model-versions-") as scratch:
        folder = Path(scratch) / "models"
        folder.mkdir()
        return asyncio.run(measure(size, folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("base", "tiny"), default="base",
                        help="random-weight models: wav2vec2-base shape, or the tiny test model")
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = parser.parse_args()
    result = run(args.size)
    print(table(result))
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
