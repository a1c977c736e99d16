"""Settings: one dataclass gives the flags, config files, checks and resume rules."""
import dataclasses
import os

import pytest

from draw.errors import DrawError
from draw.training.draw_job import DRAW
from draw.training.settings import DrawSettings, RunSettings
from draw.training.typed_settings import SESSION

CLASSIC = ["--attention=2,5", "--niter=64", "--lr=3e-4", "--epochs=100", "--dataset", "mnist",
           "--name", "paper", "--bs", "50", "--enc-dim", "300", "--dec-dim", "200",
           "--z-dim", "20", "--oldmodel", "old_model.pkl", "--live-plotting"]


def parse(argv):
    return vars(DrawSettings.parser("test").parse_args(argv))


def test_the_classic_flags_parse_to_their_settings():
    given = parse(CLASSIC)
    assert given == {"attention": "2,5", "n_iter": 64, "learning_rate": 3e-4, "epochs": 100,
                     "dataset": "mnist", "name": "paper", "batch_size": 50, "enc_dim": 300,
                     "dec_dim": 200, "z_dim": 20, "oldmodel": "old_model.pkl",
                     "live_plotting": True}
    s = DrawSettings(**given)
    assert (s.read_N, s.write_N) == (2, 5)          # --attention parsed
    assert parse(["--batch-size", "7", "--learning-rate", "0.5", "-a", "", "--plot"]) == {
        "batch_size": 7, "learning_rate": 0.5, "attention": "", "live_plotting": True}
    assert DrawSettings(attention="").read_N is None


def test_flags_not_given_are_absent_and_defaults_come_from_the_fields():
    assert parse([]) == {}
    s = DrawSettings()
    defaults = {f.name: f.default for f in dataclasses.fields(DrawSettings) if f.init}
    assert {name: getattr(s, name) for name in defaults} == defaults
    assert (s.dataset, s.epochs, s.batch_size, s.learning_rate, s.n_iter) == \
        ("bmnist", 100, 100, 1e-3, 10)


def test_a_config_file_is_overridden_by_flags(tmp_path):
    toml = tmp_path / "paper.toml"
    toml.write_text('dataset = "bmnist"\nattention = "2,5"\nniter = 64\nlr = 3e-4\n'
                    'epochs = 100\nenc-dim = 128\nbatch_size = 64\nflush_denormal = false\n')
    given = DrawSettings.given({"config": str(toml), "epochs": 3, "batch_size": None})
    assert given == {"dataset": "bmnist", "attention": "2,5", "n_iter": 64,
                     "learning_rate": 3e-4, "epochs": 3, "enc_dim": 128, "batch_size": 64,
                     "flush_denormal": False}
    json_file = tmp_path / "run.json"
    json_file.write_text('{"niter": 8, "lr": 1}')
    s = DrawSettings(**DrawSettings.given({"config": str(json_file)}))
    assert s.n_iter == 8 and s.learning_rate == 1.0 and isinstance(s.learning_rate, float)


@pytest.mark.parametrize("text, expected", [
    ("niter = 3\nn_iter = 4\n", "sets n_iter a second time"),
    ("[model]\nniter = 3\n", "unknown setting 'model'"),
    ("nither = 3\n", "unknown setting 'nither'"),
    ("resume = 3\n", "--resume must be a string, got 3"),
    ("lr = true\n", "--lr must be a number, got True"),
    ("epochs = 2.0\n", "--epochs must be an integer, got 2.0"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(DrawError) as info:
        DrawSettings(**DrawSettings.given({"config": str(path)}))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_checks_name_the_flag():
    for kwargs, message in (({"batch_size": True}, "--bs must be an integer, got True"),
                            ({"grad_clip": float("nan")}, "--grad-clip must be a positive"),
                            ({"seed": 2 ** 32}, "--seed must be an integer from 0 to"),
                            ({"name": "a/b"}, "--name must be a name"),
                            ({"dataset": "nope"}, "unknown --dataset 'nope'"),
                            ({"attention": "2"}, "--attention must be two"),
                            ({"lr_warmup": -1}, "--lr-warmup must be 0 .none. or a positive"),
                            ({"lr_decay": 0.0}, r"--lr-decay must be a number in \(0, 1\]"),
                            ({"lr_decay": 1.5}, r"--lr-decay must be a number in \(0, 1\]"),
                            ({"lr_decay": float("nan")}, "--lr-decay must be a number in"),
                            # values torch would take and the run die of, after it has begun
                            ({"learning_rate": 1e300}, r"--lr must be at most 1 \(Adam"),
                            ({"threads": 10_000}, f"--threads must be at most {os.cpu_count()}, "
                                                  f"the CPUs of this machine, got 10000"),
                            ({"name": "a" * 201}, "--name must be at most 200 bytes long "
                                                  ".* got 201$")):
        with pytest.raises(DrawError, match=message):
            DrawSettings(**kwargs)
    assert DrawSettings(seed=0).seed == 0 and DrawSettings(seed=2 ** 32 - 1).seed == 2 ** 32 - 1
    assert DrawSettings(name="paper-2.5_x").name == "paper-2.5_x"
    assert DrawSettings(name="a" * 200, learning_rate=1.0, threads=os.cpu_count()).threads == \
        os.cpu_count()


def test_the_model_sizes_are_checked_by_its_config_alone_and_name_the_flag():
    """DrawSettings takes the model's sizes as given; DrawConfig, built from them before any
    file is written (DrawJob.model_config), checks them, and its error names the flag."""
    assert DrawSettings(n_iter=0, attention="0,40").n_iter == 0
    for kwargs, message in (({"n_iter": 0}, "--niter must be a positive integer, got 0"),
                            ({"dec_dim": -2}, "--dec-dim must be a positive integer, got -2"),
                            ({"attention": "0,5"}, "--attention 0,5: read_N must be a positive "
                                                   "integer, got 0"),
                            ({"attention": "2,29"}, "--attention 2,29: write_N must fit in the "
                                                    "28x28 image, got 29")):
        with pytest.raises(DrawError, match=f"^{message}$"):
            DRAW.model_config(DrawSettings(**kwargs), (1, 28, 28))
    assert DRAW.model_config(DrawSettings(attention="2,28"), (1, 28, 28)).write_N == 28


OLD_RUN = {"name": None, "dataset": "sample", "epochs": 3, "batch_size": 50,
           "learning_rate": 0.001, "attention": "2,3", "n_iter": 2, "enc_dim": 8, "dec_dim": 8,
           "z_dim": 3, "oldmodel": None, "seed": 3, "grad_clip": 10.0, "subset": 400}


def test_resume_rules():
    # what train-draw.py stored before this dataclass: new settings take their defaults
    s = DrawSettings.resumed(OLD_RUN, {"epochs": 5, "device": "cpu", "n_iter": 2}, "m.pkl")
    assert s.epochs == 5 and s.device == "cpu" and s.flush_denormal is True
    assert (s.read_N, s.write_N) == (2, 3)
    assert set(s.stored()) == set(OLD_RUN) | {"flush_denormal", "eval_every", "eval_subset",
                                              "lr_warmup", "lr_decay", "precision",
                                              "window_lr", "matmul_precision",
                                              "learned_initial_state", "keep_every",
                                              "learned_prior"}
    assert (s.lr_warmup, s.lr_decay) == (0, 1.0)        # old runs: a constant rate, as they had
    # a zero initial state, as they had, though a new run learns it (section 2.2)
    assert s.learned_initial_state is False and DrawSettings().learned_initial_state is True
    with pytest.raises(DrawError, match="--learned-initial-state is False there, not True"):
        DrawSettings.resumed(OLD_RUN, {"learned_initial_state": True}, "m.pkl")
    # the paper's N(0, I) prior, as they had; a run does not change its prior on resume
    assert s.learned_prior is False and DrawSettings().learned_prior is False
    with pytest.raises(DrawError, match="--learned-prior is False there, not True"):
        DrawSettings.resumed(OLD_RUN, {"learned_prior": True}, "m.pkl")
    assert s.window_lr == 1.0                           # for every parameter
    assert s.precision == "32"                          # and float32
    assert not set(s.stored()) & {name for name, f in DrawSettings._fields().items()
                                  if f.metadata["on_resume"] == SESSION}
    # a lower rate for the rest of a run (an "lr drop") is allowed; the model's settings are not
    assert DrawSettings.resumed(OLD_RUN, {"learning_rate": 3e-4}, "m.pkl").learning_rate == 3e-4
    for given, message in (({"batch_size": 20}, "--bs is 50 there, not 20"),
                           ({"oldmodel": "x.pkl"}, "--resume and --oldmodel cannot be combined"),
                           ({"grad_clip": 5.0}, "--grad-clip is 10.0 there")):
        with pytest.raises(DrawError, match=message):
            DrawSettings.resumed(OLD_RUN, given, "m.pkl")
    with pytest.raises(DrawError, match="m.pkl has settings that train-draw.py \\(this version\\) does not know"):
        DrawSettings.resumed({**OLD_RUN, "future": 1}, {}, "m.pkl")
    # runs of before stored compile, now this session's choice: their False is not kept
    assert DrawSettings.resumed({**OLD_RUN, "compile": False}, {}, "m.pkl").compile is None
    assert DrawSettings.resumed({**OLD_RUN, "compile": False}, {"compile": True},
                                "m.pkl").compile is True


def test_a_classifier_can_reuse_the_machinery():
    """A subclass of RunSettings with its own fields gets flags, config keys and checks."""
    from draw.training.typed_settings import setting

    @dataclasses.dataclass(frozen=True)
    class ClassifierSettings(RunSettings):
        glimpses: int = setting(8, "number of glimpses", flag="--niter")

        def check(self):
            super().check()
            self.require("glimpses", self.glimpses >= 1, "a positive integer")

    assert vars(ClassifierSettings.parser("c").parse_args(["--niter", "4", "--bs", "9"])) == \
        {"glimpses": 4, "batch_size": 9}
    with pytest.raises(DrawError, match="--niter must be a positive integer, got 0"):
        ClassifierSettings(glimpses=0)
