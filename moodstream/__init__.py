"""moodstream: a streaming speech-based depression *screening aid* (not a diagnosis)."""

__version__ = "0.1.0"

SCREENING_NOTICE = (
    "moodstream scores are a screening aid, not a diagnosis; "
    "a qualified clinician must interpret them."
)
