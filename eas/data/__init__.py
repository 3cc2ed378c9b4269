"""Task data: AID, a synthetic AID-like stand-in, ScienceQA and Slake, plus shared scoring.

Each task module turns the data set's own on-disk format into frozen example records that share
three fields, `image` (a path or None), `prompt` (the text the model reads) and `target` (the
text it is trained to produce), next to the task's own gold fields and a `score_*` function.
Only paths travel in the records: images are decoded when a batch is built
(`eas.data.tasks.load_pixels`).
"""
from __future__ import annotations



class DataWarning(UserWarning):
    """Something in a data set was skipped (a stray file, an unreadable image)."""
