"""Reading `rasa train nlu`'s output for progress, on lines as Rasa 3.6 writes them (from a real train.log)."""

from __future__ import annotations

from nlu.training_progress import TrainingOutput, TrainingStep

LOG = [
    "/work/.venv-rasa/lib/python3.10/site-packages/tensorflow/lite/python/util.py:52: DeprecationWarning: jax",
    "2026-12-03 07:39:44 INFO     rasa.engine.training.hooks  - Starting to train component 'JiebaTokenizer'.",
    "Building prefix dict from the default dictionary ...",
    "2026-12-03 07:39:45 INFO     rasa.engine.training.hooks  - Finished training component 'JiebaTokenizer'.",
    "2026-12-03 07:39:48 INFO     rasa.engine.training.hooks  - Starting to train component 'DIETClassifier'.",
    "\x1b[0mEpochs:   0%|          | 0/100 [00:00<?, ?it/s]",
    "Epochs:   1%|          | 1/100 [00:31<51:09, 31.01s/it, t_loss=7.36, i_acc=0.305, e_f1=0.000204]",
    "Epochs: 100%|██████████| 100/100 [02:13<00:00,  1.33s/it, t_loss=1.58, i_acc=0.999, e_f1=0.997]",
    "\x1b[92mYour Rasa model is trained and saved at '/work/main/nlu/models/nlu-703436b2d4511eb0.tar.gz'.\x1b[0m",
]


def test_components_epochs_and_the_end_are_read_and_the_rest_is_not() -> None:
    output = TrainingOutput()
    assert [output.read(line) for line in LOG] == [
        None,
        TrainingStep("training JiebaTokenizer"),
        None,
        None,
        TrainingStep("training DIETClassifier"),
        TrainingStep("training DIETClassifier", 0, 100),
        TrainingStep("training DIETClassifier", 1, 100),
        TrainingStep("training DIETClassifier", 100, 100),
        TrainingStep("model saved"),
    ]


def test_epochs_before_any_component_line_still_count() -> None:
    assert TrainingOutput().read("Epochs:  50%|█████     | 5/10 [00:05<00:05]") == TrainingStep(
        "training the model", 5, 10)
