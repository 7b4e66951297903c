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


def _address(a):
    """Where array ``a``'s data starts, for a kernel that reads it through a table (NumPy on
    ``emu``, CuPy on ``cuda``)."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


class SGDUpdate(Op):
    """One step of ``SGD`` over several parameters, in place: ``run(dev, params, grads, buffers,
    decay, flat)``, lists of the parameters' arrays, their gradients, their momentum buffers
    (views of ``flat``; None without momentum) and whether each is decayed."""

    def __init__(self, lr, momentum, weight_decay, nesterov):
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay = weight_decay

    def forward_cpu(self, params, grads, buffers, decay, flat):
        # Parameter by parameter: NumPy gains nothing from one pass (no launches to save).
        for p, g, buf, d in zip(params, grads, buffers, decay):
            if d and self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                buf *= self.momentum
                buf += g
                g = g + self.momentum * buf if self.nesterov else buf
            p -= self.lr * g

    def check(self, params, grads, buffers, decay, flat):
        for p, g in zip(params, grads):
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"SGD: gradient {g.dtype} {g.shape} for a parameter {p.dtype} "
                                 f"{p.shape}")

    def forward_kernel(self, params, grads, buffers, decay, flat):
        """One ``sgd_update`` launch over all of them, which finds each parameter, gradient and
        buffer through a table of addresses and offsets (kernels/optim.cu)."""
        xp = self.dev.xp
        if not all(p.flags.c_contiguous and p.dtype == flat.dtype for p in params):
            raise ValueError(f"SGD on {self.dev}: parameters must be C-contiguous arrays of one "
                             f"dtype ({flat.dtype}), updated in place through their addresses")
        grads = [xp.ascontiguousarray(g) for g in grads]  # a copy only where strided
        sizes = [p.size for p in params]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        offsets = [0 if b is None else (_address(b) - _address(flat)) // flat.itemsize
                   for b in buffers]
        table = np.array([*map(_address, params), *map(_address, grads), *starts, *offsets,
                          *map(int, decay)], dtype=np.int64)
        launch(self.dev, "optim", "sgd_update",
               (self.dev.asarray(table), flat, self.lr, self.momentum, self.weight_decay,
                int(self.nesterov), len(params), int(starts[-1])), n=int(starts[-1]))


class SGD:
    """buf = momentum * buf + (grad + wd * p);  p -= lr * (buf, or grad + momentum * buf with
    Nesterov) -- PyTorch's form, the same as TF's MomentumOptimizer used by the official code.

    Weight decay skips every parameter for which ``no_decay(p)`` is true; by default those with
    ``ndim <= 1`` (BN gamma/beta and conv biases), as is usual: shrinking them towards 0 fights
    normalisation rather than regularising. Pass ``no_decay=lambda p: False`` to decay all.
    ``lr`` is a plain attribute: set ``opt.lr = poly_lr(...)`` before each step.
    The momentum buffers are views of one flat buffer per device and dtype; a step is one
    ``SGDUpdate`` over every parameter that has a gradient: on ``cuda`` and ``emu`` one
    ``sgd_update`` launch (kernels/optim.cu), on ``cpu`` NumPy, parameter by parameter, the same
    operations in the same order.
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
        self._flat = {}  # (device, dtype) -> the flat buffer the momentum buffers are views of

    def _buffer(self, i):
        """``params[i]``'s momentum buffer, zero at first: a view of the flat buffer of its
        device and dtype, which holds every such parameter's buffer."""
        p = self.params[i]
        key = (p.device, p.dtype)
        if key not in self._flat:
            sizes = [q.size if (q.device, q.dtype) == key else 0 for q in self.params]
            self._flat[key] = (p.device.xp.zeros(sum(sizes), p.dtype),
                               np.concatenate([[0], np.cumsum(sizes)]))
        flat, starts = self._flat[key]
        return flat[starts[i]:starts[i + 1]].reshape(p.shape)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """Update every parameter that has a gradient, in place (references stay valid): one
        ``SGDUpdate`` per device and dtype."""
        groups = {}
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.momentum and self.buffers[i] is None:
                self.buffers[i] = self._buffer(i)
            groups.setdefault((p.device, p.dtype), []).append(i)
        for (dev, dtype), idx in groups.items():
            # Without momentum no buffer is read: one element of the dtype stands in for flat.
            if (dev, dtype) not in self._flat:
                self._flat[dev, dtype] = dev.xp.zeros(1, dtype), None
            flat = self._flat[dev, dtype][0]
            update = SGDUpdate(self.lr, self.momentum, self.weight_decay, self.nesterov)
            update.run(dev, [self.params[i].data for i in idx], [self.params[i].grad for i in idx],
                       [self.buffers[i] for i in idx], [self.decay[i] for i in idx], flat)

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
            buffers[i] = value
        self.lr, self.momentum = float(state["lr"]), float(state["momentum"])
        self.weight_decay, self.nesterov = float(state["weight_decay"]), bool(state["nesterov"])
        self.buffers, self._flat = [None] * len(self.params), {}
        for i, value in enumerate(buffers):
            if value is not None:  # copied into the flat buffer: never aliases the caller's state
                self.buffers[i] = self._buffer(i)
                self.buffers[i][...] = self.params[i].device.asarray(
                    np.asarray(value, dtype=self.params[i].dtype))
