"""The recordings and the checkpoint bundled in moodstream/assets: one list, read by the demo,
the server's accuracy probe and the demo-checkpoint recipe.

The two interviews are synthetic speech (scripts/make_sample_interview.py), not real participants.
"""
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_AUDIO = ASSETS / "sample-interview.ogg"
SAMPLE_PROMPTS = ASSETS / "sample-interview.prompts.csv"
DEMO_CHECKPOINT = ASSETS / "demo-checkpoint"
# participant id -> (recording, the interviewer's prompt intervals in it)
DEMO_PARTICIPANTS = {
    "slowed-delivery": (SAMPLE_AUDIO, SAMPLE_PROMPTS),
    "lively-delivery": (ASSETS / "sample-interview-lively.ogg", ASSETS / "sample-interview-lively.prompts.csv"),
}
