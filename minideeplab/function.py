"""The op protocol (ARCHITECTURE.md s. 3) and Function, one differentiable op, DeZero-style (s. 4).

An op with a NumPy path and a kernel path, in the spirit of Chainer's ``forward_cpu`` /
``forward_gpu``, implements ``check(*xs)``, ``forward_cpu`` / ``forward_kernel`` and, when it is a
Function, ``backward_cpu`` / ``backward_kernel``. The base class runs ``check`` (the validation
both paths share: shapes, dtypes, and what both paths then read, such as a geometry), then the
path of the device: ``_kernel`` on ``cuda`` and ``emu`` (which run the same ``.cu`` kernels),
``_cpu`` on ``cpu``. An op with one implementation for every device (through ``self.dev.xp``)
overrides ``forward`` and ``backward`` instead and checks its inputs there.

``forward(*arrays) -> array or tuple``; ``backward(*grads) -> grads`` (one per input, ``None``
where an input takes no gradient). ``self.dev`` is the device the inputs live on;
``self.needs_grad[i]`` tells backward which input gradients are wanted.

One dtype rule for every op with a kernel path, on every device, checked here before ``check``:
the inputs it names in ``reals`` are float32 or float64 (the kernels' ``real``), all of one dtype;
anything else is a ValueError naming the op, the argument and the dtype, on ``cpu`` as on the
kernel devices. Other inputs (the loss's integer labels) are the op's ``check``'s to judge. The
array ops of ``functional/basic.py`` name no ``reals``: they run through ``xp`` on every device
and take what it takes.
"""
import numpy as np

from . import config

REALS = (np.dtype(np.float32), np.dtype(np.float64))


class Op:
    """An operation on the arrays of one device: ``check``, then ``forward_cpu`` or
    ``forward_kernel``. Without autograd (the SGD update, ``channel_sum``) it runs via ``run``.
    ``name``: the op as its caller knows it, in messages; ``reals``: the names of its leading
    inputs that must be real arrays (float32 or float64, one dtype), checked by ``check_reals``."""

    name = None
    reals = ()

    def run(self, dev, *xs):
        """``forward(*xs)`` on arrays of device ``dev``, outside the autograd graph."""
        self.dev = dev
        self.check_reals(xs)
        return self.forward(*xs)

    def check_reals(self, xs):
        """ValueError unless the inputs named in ``reals`` (None: an absent optional input) are
        float32 or float64 arrays of one dtype: the dtypes the kernels take, refused alike on
        every device."""
        first = None
        for arg, x in zip(self.reals, xs):
            if x is None:
                continue
            if x.dtype not in REALS:
                raise ValueError(f"{self.name}: {arg} has dtype {x.dtype}; the ops with kernels "
                                 f"take float32 or float64 on every device")
            if first is None:
                first = arg, x.dtype
            elif x.dtype != first[1]:
                raise ValueError(f"{self.name}: {arg} has dtype {x.dtype} but {first[0]} "
                                 f"{first[1]}; an op takes one real dtype")

    def forward(self, *xs):
        self.check(*xs)
        return self.forward_kernel(*xs) if self.dev.uses_kernels else self.forward_cpu(*xs)

    def check(self, *xs):
        """Raise ValueError on inputs that neither path accepts (and keep what both paths read);
        nothing by default."""

    def forward_cpu(self, *xs):
        raise NotImplementedError(f"{type(self).__name__}.forward_cpu is abstract: implement "
                                  "it, or forward for every device")

    def forward_kernel(self, *xs):
        raise NotImplementedError(f"{type(self).__name__}.forward_kernel is abstract: implement "
                                  "it, or forward for every device")


class Function(Op):
    """One differentiable op: ``op(*tensors)`` runs ``forward`` on their arrays and, when a
    gradient is wanted, records itself as the outputs' creator for ``backward``."""

    def __call__(self, *inputs):
        from .tensor import Tensor, as_tensor
        tensors = [x for x in inputs if isinstance(x, Tensor)]
        if not tensors:
            raise TypeError(f"{type(self).__name__} needs at least one Tensor input")
        dev = tensors[0].device
        for t in tensors:
            if t.device != dev:
                raise ValueError(f"{type(self).__name__}: inputs on different devices "
                                 f"({dev} and {t.device}); move them with .to()")
        inputs = [as_tensor(x, dev, like=tensors[0]) for x in inputs]
        self.dev = dev
        self.needs_grad = tuple(x.requires_grad for x in inputs)
        arrays = [x.data for x in inputs]
        self.check_reals(arrays)
        ys = self.forward(*arrays)
        single = not isinstance(ys, tuple)
        outputs = [Tensor(y, device=dev) for y in ((ys,) if single else ys)]
        if config.grad_enabled and any(self.needs_grad):
            self.generation = max(x.generation for x in inputs)
            for i, out in enumerate(outputs):
                out.creator, out.requires_grad, out.generation = self, True, self.generation + 1
                out.output_index = i
            # Edges, not the input Tensors, whose arrays the graph would then keep alive: what
            # the backward needs of its inputs, the op saved on self (ARCHITECTURE.md s. 4).
            self.inputs = [_edge(x) for x in inputs]
            self.n_outputs = len(outputs)
        return outputs[0] if single else tuple(outputs)

    def release(self):
        """Drop the edges and, on a kernel device, every array the forward saved: the backward has
        used them. CuPy's pool reuses a freed block at once, so the device's memory falls during
        the backward; on ``cpu`` the saved arrays go with the graph at the end of the backward
        instead, since freed as they are used they are returned to the OS and the next step pays
        page faults for them (benchmarks/README.md)."""
        if self.dev.uses_kernels:
            xp = self.dev.xp
            for name, value in list(vars(self).items()):
                if isinstance(value, xp.ndarray):
                    delattr(self, name)
        self.inputs = None

    def backward(self, *gys):
        return self.backward_kernel(*gys) if self.dev.uses_kernels else self.backward_cpu(*gys)

    def backward_cpu(self, *gys):
        raise NotImplementedError(f"{type(self).__name__}.backward_cpu is abstract: implement "
                                  "it, or backward for every device")

    def backward_kernel(self, *gys):
        raise NotImplementedError(f"{type(self).__name__}.backward_kernel is abstract: implement "
                                  "it, or backward for every device")


def _edge(x):
    """Where the gradient of input ``x`` goes: None (it takes none), the leaf Tensor ``x`` itself
    (its ``.grad`` accumulates it), or ``(creator, output index)`` of a computed ``x``, which
    keeps the creator (and so the graph behind it), not ``x``'s array."""
    if not x.requires_grad:
        return None
    return x if x.creator is None else (x.creator, x.output_index)

