"""moodstream: a streaming speech-based depression *screening aid* (not a diagnosis)."""

__version__ = "0.1.0"

SCREENING_NOTICE = (
    "moodstream scores are a screening aid, not a diagnosis; "
    "a qualified clinician must interpret them."
)

# Shown instead of a label while a session has less speech than the checkpoint's evidence rule asks for.
COLLECTING_SPEECH = "collecting speech"


def evidence_sufficient(update) -> bool:
    """ScoreUpdate.evidence_sufficient; unset (a server without the evidence rule) counts as sufficient."""
    return update.evidence_sufficient if update.HasField("evidence_sufficient") else True
