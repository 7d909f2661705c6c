"""What `rasa train nlu` is doing, read from its output: the component in training, DIET's epochs.

Rasa 3.6 logs `Starting to train component 'X'` for each pipeline component and draws
its epochs with tqdm (`Epochs:  37%|███▋ | 37/100 [00:45<01:10, ..., i_acc=0.912]`),
redrawn after a carriage return (TQDM_DISABLE does not stop it: Rasa passes `disable`
itself). Lines come one at a time, ANSI colours included; anything else (TensorFlow's
warnings, Jieba's messages) says nothing about progress.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COMPONENT = re.compile(r"Starting to train component '([^']+)'")
EPOCHS = re.compile(r"Epochs:\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")
SAVED = "Your Rasa model is trained and saved"


@dataclass(frozen=True)
class TrainingStep:
    """What the line says: the phase now, and epochs done out of total while a model trains in epochs."""

    phase: str
    done: int | None = None
    total: int | None = None


class TrainingOutput:
    """Reads Rasa's output line by line; remembers the component in training to name its epochs."""

    def __init__(self) -> None:
        self.component = ""

    def read(self, line: str) -> TrainingStep | None:
        text = ANSI.sub("", line)
        if found := COMPONENT.search(text):
            self.component = found[1]
            return TrainingStep(f"training {self.component}")
        if found := EPOCHS.search(text):
            return TrainingStep(f"training {self.component or 'the model'}", int(found[1]), int(found[2]))
        if SAVED in text:
            return TrainingStep("model saved")
        return None
