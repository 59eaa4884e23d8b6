"""What each model's probability means and how much speech it needs before a score carries a label.

Two sources: the checkpoint folders the dashboard was started with (--checkpoint, read once), and the
scoring server's GetModelInfo (asked by the follower whenever the server answers), which also gives the
evidence rule and the version new sessions get. So the pages can show the threshold, the meaning
sentence and the evidence rule before a session's first score arrives.
"""
from __future__ import annotations

from moodstream.model_description import ModelDescription
from moodstream.speech import CaptureSettings
from moodstream.v1 import moodstream_pb2 as pb


def evidence_rule(info: pb.ModelInfo) -> dict | None:
    """How much speech a score needs to carry a label: segments, and seconds of kept speech (the
    model's chunk length, or the agent's default where the checkpoint records no speech settings)."""
    if not info.min_evidence_segments:
        return None
    chunk = info.speech.chunk_seconds if info.HasField("speech") and info.speech.chunk_seconds \
        else CaptureSettings().chunk_seconds
    return {"segments": info.min_evidence_segments, "seconds": round(info.min_evidence_segments * chunk, 1)}


class ModelCatalog:
    """Every model the dashboard can describe, by version."""

    def __init__(self, described: list[ModelDescription]) -> None:
        self.described = {m.model_version: m for m in described}  # from --checkpoint: preferred where both say
        self.served: dict[str, pb.ModelInfo] = {}
        self.current = ""  # the version the server gives new sessions ("" until it has answered)

    def take_info(self, reply: pb.ModelInfo) -> bool:
        """Adopt a GetModelInfo answer (the current version and every version held); True if it changed."""
        served = {info.model_version: info for info in (*reply.versions, reply)}
        for info in served.values():
            info.ClearField("versions")
        if reply.model_version == self.current and served == self.served:
            return False
        self.served, self.current = served, reply.model_version
        return True

    def describe(self, model_version: str, threshold: float | None = None) -> dict:
        """What `model_version`'s probability means, its threshold (the score's own where given) and its
        evidence rule (None where the server has not said)."""
        info = self.served.get(model_version)
        description = self.described.get(model_version)
        if description is None and info is not None:
            description = ModelDescription(model_version=model_version, threshold=info.threshold,
                                           training_data=info.training_data, positive_class=info.positive_class,
                                           demo_model=info.demo_model)
        evidence = evidence_rule(info) if info is not None else None
        interval = info.interval_level if info is not None and info.HasField("interval_level") else None
        if description is None:
            return {"model_version": model_version, "threshold": threshold, "described": False, "flag": "",
                    "demo_model": False, "evidence": evidence, "interval_level": interval,
                    "meaning": f"This dashboard was not told what model {model_version}'s probability estimates; "
                               "start it with --checkpoint pointing at that model's folder to show it here."}
        chosen = description.threshold if threshold is None else threshold
        return description.to_dict() | {"threshold": chosen, "evidence": evidence, "interval_level": interval}

    def models(self) -> list[dict]:
        """Every version the server holds, the one new sessions get first ([] until it has answered)."""
        versions = sorted(self.served, key=lambda version: (version != self.current, version))
        return [self.describe(version) for version in versions]
