"""Training DRAW (train-draw.py): what its runs add to the scaffold of draw/training/run.py.

DrawSettings give the model config; `--oldmodel` names a model file to start from; the data
are images alone, on the device once; the task is the bound of eq. 12; SampleCheckpoint draws
100 samples every epoch. The glimpses compile when the run is long enough to repay it
(`draw.fast_path.compile_choice`), and the header says so.
"""
import dataclasses

import torch

from draw.checkpoint import (CheckpointError, build_model, draw_config, file_config,
                             load_checkpoint, training_history)
from draw.datasets import batches, get_data
from draw.errors import DrawError
from draw.fast_path import compile_choice, compile_glimpses
from draw.memory import check_inference
from draw.model import ConfigError, DrawConfig, DrawModel
from draw.training.distributed import first_on_each_machine
from draw.training.extensions import SampleCheckpoint
from draw.training.job import Data, Job, Parts, lr_tag
from draw.training.main_loop import adam, adam_with_heads
from draw.training.run import train
from draw.training.settings import DrawSettings
from draw.training.task import DrawTask

N_SAMPLES = 100     # samples in sample.png and the GIFs, a 10 x 10 grid
# DrawConfig's switches that a run may turn on over an --oldmodel written without them, and what
# a run that has one off must do to go on from a file that has it on
GROWABLE = {"learned_initial_state": "leave out --no-learned-initial-state",
            "learned_prior": "give --learned-prior"}


class DrawJob(Job):
    script = "train-draw.py"
    settings_class = DrawSettings
    picture = ("epoch-{epoch:03d}.png", "samples")
    foreign = " (an exported or foreign model file: start a new run from it with --oldmodel)"

    def long_name(self, s: DrawSettings) -> str:
        """The classic run name, e.g. `bmnist-r2-w5-t64-enc256-dec256-z100-lr34`."""
        tag = "full" if s.read_N is None else f"r{s.read_N}-w{s.write_N}"
        return (f"{s.dataset}-{tag}-t{s.n_iter}-enc{s.enc_dim}-dec{s.dec_dim}-z{s.z_dim}-"
                f"lr{lr_tag(s.learning_rate)}")

    def model_config(self, s: DrawSettings, shape: tuple[int, int, int]) -> DrawConfig:
        """DrawConfig's fields from the settings of the same names and the image `shape`;
        DrawConfig checks them, its error naming the flag."""
        C, H, W = shape
        sizes = {f.name: getattr(s, f.name) for f in dataclasses.fields(DrawConfig)
                 if f.name not in ("channels", "height", "width")}
        try:
            return DrawConfig(channels=C, height=H, width=W, **sizes)
        except ConfigError as e:
            raise s.config_error(e, {"read_N": "attention", "write_N": "attention"}) from e

    def read_model_file(self, path) -> dict:
        ckpt = load_checkpoint(path)
        draw_config(ckpt, path)           # a DRAW model's file (not a classifier's)
        return ckpt

    def start_from(self, s: DrawSettings, cfg: DrawConfig, device
                   ) -> tuple[DrawModel, dict] | None:
        """The --oldmodel, whose config must be the run's but for T, and what it was trained
        for."""
        if s.oldmodel is None:
            return None
        try:
            ckpt = load_checkpoint(s.oldmodel)
            # no parameter depends on T: a file goes on with more or fewer glimpses (--niter)
            old_cfg = dataclasses.replace(file_config(ckpt, s.oldmodel), n_iter=cfg.n_iter)
            # a file without the learned initial state or prior goes on as one with them, at the
            # values that compute what it did
            grown = {k: True for k in GROWABLE if not getattr(old_cfg, k) and getattr(cfg, k)}
            if dataclasses.replace(old_cfg, **grown) != cfg:
                here = cfg.to_dict()
                diffs = ", ".join(
                    f"{k} {v} there, {here[k]} here"
                    + (f" ({GROWABLE[k]})" if k in GROWABLE else "")
                    for k, v in old_cfg.to_dict().items() if here[k] != v and k not in grown)
                raise DrawError(f"--oldmodel {s.oldmodel} has another configuration: {diffs}")
            # the run's own model, whose training make_plan checks; built here, before that
            check_inference(cfg, 1, f"the model of --oldmodel {s.oldmodel}", device)
            model = build_model(ckpt, s.oldmodel)
            if "learned_initial_state" in grown:
                model.learn_initial_state()
            if "learned_prior" in grown:
                model.learn_prior()
            return model, training_history(ckpt, s.oldmodel)
        except CheckpointError as e:
            raise DrawError(f"--oldmodel: {e}") from e

    def load_data(self, s: DrawSettings, dist, device) -> Data:
        """The images, on the device once rather than copied at every pass."""
        data = first_on_each_machine(dist, lambda: get_data(s.dataset, root=s.data_dir,
                                                            seed=s.seed),
                                     device, what=f"loading {s.dataset}")
        whole = Data(data.train, data.valid.to(device), data.test.to(device), batches,
                     binary=data.binary)
        cut = whole.cut(s, lambda images, index: images[index])
        cut.train = cut.train.to(device)
        return cut

    def picture_bytes(self, cfg: DrawConfig, s: DrawSettings) -> int:
        return SampleCheckpoint.needs(cfg, N_SAMPLES)

    def build(self, plan) -> Parts:
        s, cfg = plan.checked.settings, plan.checked.cfg
        model = DrawModel.from_config(cfg).to(plan.device)
        if plan.checked.start is not None:
            model.load_state_dict(plan.checked.start.state_dict())
        compiled, why = compile_choice(s.compile, plan.steps_left * s.n_iter, plan.device)
        if compiled:
            compile_glimpses(model)
        pictures = [SampleCheckpoint(plan.run_path, (cfg.channels, cfg.height, cfg.width),
                                     n=N_SAMPLES, seed=s.seed)] if plan.dist.is_main else []
        windows = "" if s.window_lr == 1 else f"; attention windows x{s.window_lr:g}"
        header = [("learning rate", s.describe_lr() + windows),
                  ("attention", s.attention or "none"),
                  ("n_iterations", cfg.n_iter), ("encoder dimension", cfg.enc_dim),
                  ("z dimension", cfg.z_dim), ("decoder dimension", cfg.dec_dim),
                  ("initial state", "c_0, h_0^enc, h_0^dec learned (section 2.2)"
                   if cfg.learned_initial_state else "zero (--no-learned-initial-state)"),
                  ("prior", "learned, N(m_t, s_t) given h_{t-1}^dec (--learned-prior)"
                   if cfg.learned_prior else "N(0, I), the paper's"),
                  ("compiled glimpses", why),
                  ("objective", "the bound on -log p(x) (eq. 12), nats" if plan.data.binary
                   else "Bernoulli cross-entropy of the grey levels + KL (eq. 12), nats: not "
                        "a bound on -log p(x) for non-binary data")]
        return Parts(DrawTask(model, plan.dist), draw_adam(model, s), pictures, header)


def draw_adam(model: DrawModel, s: DrawSettings) -> torch.optim.Adam:
    """Adam; with --window-lr below 1 the windows' heads (eq. 21) in a group of their own at
    that `lr_scale`, else one group, as runs saved before --window-lr have."""
    if s.window_lr == 1:
        return adam(model.parameters(), lr=s.learning_rate)
    return adam_with_heads(model, model.window_parameters(), s.window_lr, s.learning_rate)


DRAW = DrawJob()


def main(**flags) -> None:
    """Train DRAW; `flags` are train-draw.py's, by DrawSettings field name, plus `config`."""
    train(DRAW, flags)
