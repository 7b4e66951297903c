"""SGD with momentum and weight decay, and the "poly" schedule (paper Sec. 4; ARCHITECTURE.md
s. 8)."""
import numpy as np

from .device import get_device
from .function import Op
from .kernels import launch


def poly_lr(base_lr, it, max_it, power=0.9):
    """The paper's "poly" policy: base_lr * (1 - it / max_it) ** power (0 from it = max_it on)."""
    return base_lr * max(0.0, 1.0 - it / max_it) ** power


def _is_1d(p):
    return p.ndim <= 1


class SGDUpdate(Op):
    """One parameter's step of ``SGD``, in place: ``run(dev, p, grad, buf)``; ``buf`` is the
    momentum buffer (None without momentum), ``weight_decay`` 0 for a parameter without decay."""

    def __init__(self, lr, momentum, weight_decay, nesterov):
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay = weight_decay

    def forward_cpu(self, p, g, buf):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf *= self.momentum
            buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g

    def forward_kernel(self, p, g, buf):
        # Without momentum the kernel never touches its buffer argument: p stands in for it.
        launch(self.dev, "optim", "sgd_update",
               (p, g, p if buf is None else buf, self.lr, self.momentum, self.weight_decay,
                int(self.nesterov), p.size), n=p.size)


class SGD:
    """buf = momentum * buf + (grad + wd * p);  p -= lr * (buf, or grad + momentum * buf with
    Nesterov) -- PyTorch's form, the same as TF's MomentumOptimizer used by the official code.

    Weight decay skips every parameter for which ``no_decay(p)`` is true; by default those with
    ``ndim <= 1`` (BN gamma/beta and conv biases), as is usual: shrinking them towards 0 fights
    normalisation rather than regularising. Pass ``no_decay=lambda p: False`` to decay all.
    ``lr`` is a plain attribute: set ``opt.lr = poly_lr(...)`` before each step.
    Each parameter's update is an ``SGDUpdate``: on ``cuda`` and ``emu`` one ``sgd_update``
    launch (kernels/optim.cu); on ``cpu`` NumPy, the same operations in the same order.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, nesterov=False, no_decay=_is_1d):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr={lr}, momentum={momentum}, weight_decay={weight_decay} "
                             "must all be >= 0")
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay = weight_decay
        self.decay = [not no_decay(p) for p in self.params]
        self.buffers = [None] * len(self.params)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """Update every parameter that has a gradient, in place (references stay valid)."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            wd = self.weight_decay if self.decay[i] else 0.0
            if self.momentum and self.buffers[i] is None:
                self.buffers[i] = p.device.xp.zeros_like(p.data)
            update = SGDUpdate(self.lr, self.momentum, wd, self.nesterov)
            update.run(p.device, p.data, p.grad, self.buffers[i])

    def state_dict(self):
        """Flat dict of NumPy values (fits an ``.npz``): hyper-parameters and ``buf.<i>``, the
        momentum buffer of ``params[i]`` (absent until its first step)."""
        state = {"lr": np.float64(self.lr), "momentum": np.float64(self.momentum),
                 "weight_decay": np.float64(self.weight_decay), "nesterov": np.bool_(self.nesterov)}
        cpu = get_device("cpu")
        state.update({f"buf.{i}": cpu.asarray(b).copy() for i, b in enumerate(self.buffers)
                      if b is not None})
        return state

    def load_state_dict(self, state):
        buffers = [None] * len(self.params)
        for key, value in state.items():
            if not key.startswith("buf."):
                continue
            i = int(key[4:])
            if i >= len(self.params) or np.shape(value) != self.params[i].shape:
                shape = self.params[i].shape if i < len(self.params) else "no such parameter"
                raise ValueError(f"SGD.load_state_dict: {key} has shape {np.shape(value)}, "
                                 f"parameter: {shape}")
            # A copy: the buffers are updated in place and must not alias the caller's state.
            buffers[i] = self.params[i].device.asarray(np.array(value, dtype=self.params[i].dtype))
        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self.weight_decay, self.nesterov = float(state["weight_decay"]), bool(state["nesterov"])
        self.buffers = buffers
