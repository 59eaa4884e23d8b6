"""Labelled recordings in, subject-only speech spans out: the dataset types (trainer/dataset.py) and the
readers of DAIC-WOZ and E-DAIC (trainer/daic_woz.py) and of a generic manifest (trainer/manifest.py), under
one import."""
from moodstream.trainer.daic_woz import read_daic_woz
from moodstream.trainer.dataset import AudioSpan, Dataset, Session, natural_key
from moodstream.trainer.manifest import read_manifest

__all__ = ["AudioSpan", "Dataset", "Session", "natural_key", "read_daic_woz", "read_manifest"]
