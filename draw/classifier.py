"""The read-only attention classifier of DRAW's section 4.1 ("differentiable RAM", Table 1).

References
----------
K. Gregor, I. Danihelka, A. Graves, D. J. Rezende, D. Wierstra.
"DRAW: A Recurrent Neural Network For Image Generation", ICML 2015, arXiv:1502.04623.
V. Mnih, N. Heess, A. Graves, K. Kavukcuoglu. "Recurrent Models of Visual Attention", NIPS 2014
(RAM, whose 100x100 cluttered MNIST task Table 1 uses).

What the paper says (section 4.1): an LSTM "receives a 12 x 12 'glimpse' from the input image at
each time-step, using the selective read operation defined in Section 3.2. After a fixed number
of glimpses the network uses a softmax layer to classify the MNIST digit." Table 1 reports 4 and
8 glimpses; Table 3 gives the LSTM 256 units and the 12 x 12 read, with no z and no write.
Per glimpse t = 1..T:

    (g~_Y, g~_X, log delta~, log sigma^2, log gamma) = W(h_{t-1})     eq. 21
    r_t = gamma F_Y x F_X^T                                            eq. 27, x only
    h_t = LSTM(h_{t-1}, r_t)                                           as eq. 5, one network
    p(y | x) = softmax(V h_T + b)                                      after the last glimpse

Where the paper is silent, the choices made here:
- The read window comes from the LSTM's own previous state (as eq. 21 from h_{t-1}^dec); with
  h_0 = c_0 = 0 the first window is the read head's bias alone.
- The LSTM input is the glimpse only: no error image (no canvas), no explicit location.
- The loss is the cross-entropy of the softmax on the final state alone.
- Initialisation (ours): PyTorch's default weights for the LSTM and the softmax, forget-gate
  bias 1, the read head's weights N(0, 0.01) and its bias a centred window tiling the image
  with sigma = delta / 2 (`spanning_window_bias`): the first glimpse is a blurred overview.
  gamma starts at delta, not 1: a glimpse value is a weighted mean of mostly black pixels, and
  at gamma = 1 the LSTM hardly saw it (doc/development.md).
"""
import dataclasses
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from draw.bricks import AttentionReader
from draw.model import ConfigError, ModelConfigBase

WINDOW_NAMES = ("center_y", "center_x", "delta", "sigma", "gamma")
MODEL_KIND = "attention-classifier"     # the "model" entry of a classifier's saved config


@dataclass(frozen=True)
class ClassifierConfig(ModelConfigBase):
    """Everything that defines a classifier's architecture; with a state_dict, a whole model."""
    channels: int = 1
    height: int = 100
    width: int = 100
    n_iter: int = 8          # glimpses T
    enc_dim: int = 256       # LSTM state size
    read_N: int = 12         # the glimpse is read_N x read_N
    n_classes: int = 10

    def __post_init__(self):
        super().__post_init__()
        if self.n_classes < 2:
            raise ConfigError(self, "n_classes", f"must be at least 2, got {self.n_classes}")

    def to_dict(self) -> dict:
        """The fields, and "model": MODEL_KIND, which tells a classifier's model file from a
        DRAW model's (whose config has no "model")."""
        return {"model": MODEL_KIND, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        if d.get("model") != MODEL_KIND:
            raise ValueError(f"not an attention classifier's config (its \"model\" is "
                             f"{d.get('model')!r}, not {MODEL_KIND!r})")
        return super().from_dict({key: value for key, value in d.items() if key != "model"})


class GlimpseReader(AttentionReader):
    """DRAW's attention reader with the image alone: gamma F_Y x F_X^T (eq. 27 without x_hat),
    its first window an even cover at gamma = delta (the module docstring says why)."""
    window_bias = (1 / 2, 1.0)        # sigma / delta and gamma's power of delta

    def __init__(self, x_dim: int, state_dim: int, channels: int, height: int, width: int,
                 N: int):
        super().__init__(x_dim, state_dim, channels, height, width, N)
        self.read_dim = channels * N * N

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The glimpse (B, C*N*N) and its window (center_y, center_x, delta, sigma, gamma),
        each (B,), chosen from the state h (B, state_dim)."""
        att = self.zoomer.nn2att(self.readout(h))                              # eq. 21
        center_y, center_x, delta, sigma, gamma = att
        glimpse = self.zoomer.read(x, center_y, center_x, delta, sigma)       # (B, C*N*N)
        return gamma[:, None] * glimpse, att


class AttentionClassifier(nn.Module):
    """T glimpses through a read window chosen by an LSTM, then a softmax on its last state.

    Parameters
    ----------
    n_iter : int
        Number of glimpses T.
    reader : GlimpseReader
    lstm : nn.LSTMCell
        Input size reader.read_dim.
    classifier : nn.Linear
        From the LSTM state to the class logits.
    """

    def __init__(self, n_iter: int, reader: GlimpseReader, lstm: nn.LSTMCell,
                 classifier: nn.Linear):
        super().__init__()
        self.n_iter = n_iter
        self.reader = reader
        self.lstm = lstm
        self.classifier = classifier
        self.config: ClassifierConfig | None = None
        self.glimpses_per_call: int | None = None     # None: all T in one call of `glimpses`
        self.apply(self._init_weights)

    @classmethod
    def from_config(cls, cfg: ClassifierConfig) -> "AttentionClassifier":
        reader = GlimpseReader(cfg.x_dim, cfg.enc_dim, cfg.channels, cfg.height, cfg.width,
                               cfg.read_N)
        model = cls(cfg.n_iter, reader, nn.LSTMCell(reader.read_dim, cfg.enc_dim),
                    nn.Linear(cfg.enc_dim, cfg.n_classes))
        model.config = cfg
        return model

    @staticmethod
    def _init_weights(module: nn.Module):
        """See the module docstring; `apply` visits the bricks after their own Linear, so the
        read head's values below are final."""
        with torch.no_grad():
            if isinstance(module, nn.LSTMCell):
                H = module.hidden_size
                module.bias_ih[H:2 * H] = 1.0                 # gates are ordered (i, f, g, o)
                module.bias_hh[H:2 * H] = 0.0                 # so the forget bias is exactly 1
            elif isinstance(module, GlimpseReader):
                nn.init.normal_(module.readout.weight, mean=0.0, std=0.01)
                module.reset_window()

    def glimpses(self, state: tuple[Tensor, Tensor], x: Tensor, k: int
                 ) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """k consecutive glimpses of x (B, C*H*W) from the LSTM state (h, cell), each (B,
        enc_dim): read with the window chosen from h (eqs. 21, 27), then one LSTM step.
        Returns the state and the windows (5, k, B), rows as WINDOW_NAMES, detached (for
        pictures). What draw.fast_path.compile_glimpses compiles."""
        h, cell = state
        windows = []
        for _ in range(k):
            r, att = self.reader(x, h)                                        # eqs. 21, 27
            h, cell = self.lstm(r, (h, cell))
            windows.append(torch.stack(att).detach())                         # (5, B)
        return (h, cell), torch.stack(windows, dim=1)                         # (5, k, B)

    def forward(self, x: Tensor, return_attention: bool = False):
        """Classify a batch.

        Parameters
        ----------
        x : Tensor, shape (B, C*H*W), values in [0, 1]
        return_attention : bool
            Also return every glimpse's read window.

        Returns
        -------
        logits : Tensor, shape (B, n_classes)
            log p(y | x) up to a constant per example (softmax them for the probabilities).
        attention : dict of Tensor, each of shape (n_iter, B), only with return_attention
            'center_y', 'center_x', 'delta', 'sigma', 'gamma' of the window of glimpse t.
        """
        h = x.new_zeros(x.shape[0], self.lstm.hidden_size)                   # h_0
        state = (h, torch.zeros_like(h))                                      # (h_0, c_0)
        per_call = self.glimpses_per_call or self.n_iter
        windows = []
        for start in range(0, self.n_iter, per_call):
            state, part = self.glimpses(state, x, min(per_call, self.n_iter - start))
            windows.append(part)
        logits = self.classifier(state[0])                                    # (B, K)
        if not return_attention:
            return logits
        windows = torch.cat(windows, dim=1)                                   # (5, T, B)
        return logits, dict(zip(WINDOW_NAMES, windows.unbind(0)))


def classification_loss(logits: Tensor, y: Tensor) -> Tensor:
    """-log p(y | x) under the softmax of the final state, per example: shape (B,), nats."""
    return F.cross_entropy(logits, y, reduction="none")


def errors(logits: Tensor, y: Tensor) -> Tensor:
    """1.0 where the most probable class is not the label, else 0.0: shape (B,)."""
    return (logits.argmax(dim=1) != y).to(logits.dtype)
