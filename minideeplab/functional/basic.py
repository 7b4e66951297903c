"""Array ops with gradients: arithmetic with broadcasting, matmul, shape ops, reductions, exp/log.

These run unchanged on every device through ``self.dev.xp`` (NumPy on cpu and emu, CuPy on cuda):
they are memory-bound one-liners for which a hand-written kernel would teach nothing new.
"""
import numpy as np

from ..function import Function


def sum_to(xp, g, shape):
    """Undo broadcasting: sum ``g`` down to ``shape`` (the gradient of broadcast_to)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape)
                                      if s == 1 and g.shape[i + lead] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape) if lead else g


def _broadcast_shape(op, a, b):
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None


class _Binary(Function):
    def forward(self, a, b):
        _broadcast_shape(type(self).__name__.lower(), a, b)
        self.shapes = a.shape, b.shape
        return self.compute(a, b)

    def backward(self, gy):
        ga, gb = self.grads(gy)
        xp = self.dev.xp
        return (sum_to(xp, ga, self.shapes[0]) if self.needs_grad[0] else None,
                sum_to(xp, gb, self.shapes[1]) if self.needs_grad[1] else None)


class Add(_Binary):
    compute = staticmethod(lambda a, b: a + b)
    grads = lambda self, gy: (gy, gy)  # noqa: E731


class Sub(_Binary):
    compute = staticmethod(lambda a, b: a - b)
    grads = lambda self, gy: (gy, -gy)  # noqa: E731


class Mul(_Binary):
    def compute(self, a, b):
        self.a, self.b = a, b
        return a * b

    def grads(self, gy):
        return gy * self.b, gy * self.a


class Div(_Binary):
    def compute(self, a, b):
        self.a, self.b = a, b
        return a / b

    def grads(self, gy):
        ga = gy / self.b
        return ga, -ga * self.a / self.b


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Pow(Function):
    """x ** c for a constant exponent c."""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        self.x = x
        return x ** self.c

    def backward(self, gy):
        return gy * self.c * self.x ** (self.c - 1)


class Exp(Function):
    def forward(self, x):
        self.y = self.dev.xp.exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return self.dev.xp.log(x)

    def backward(self, gy):
        return gy / self.x


class MatMul(Function):
    """(..., n, k) @ (..., k, m) with batch broadcasting."""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not chain "
                             "(need (..., n, k) @ (..., k, m))")
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        xp, a, b = self.dev.xp, self.a, self.b
        ga = sum_to(xp, gy @ b.swapaxes(-1, -2), a.shape) if self.needs_grad[0] else None
        gb = sum_to(xp, a.swapaxes(-1, -2) @ gy, b.shape) if self.needs_grad[1] else None
        return ga, gb


class Reshape(Function):
    def __init__(self, shape):
        self.shape = tuple(shape) if not np.isscalar(shape) else (shape,)

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {x.shape} into {self.shape}") from None

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Transpose(Function):
    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        axes = tuple(range(x.ndim))[::-1] if self.axes is None else tuple(self.axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation for shape {x.shape}")
        self.axes = axes
        return x.transpose(axes)

    def backward(self, gy):
        return gy.transpose(tuple(np.argsort(self.axes)))


class BroadcastTo(Function):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return self.dev.xp.broadcast_to(x, self.shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast {x.shape} to {self.shape}") from None

    def backward(self, gy):
        return sum_to(self.dev.xp, gy, self.in_shape)


class Sum(Function):
    """Sum over ``axis`` (None: all); ``Mean`` divides by the number of summed elements."""

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.in_shape = x.shape
        axes = range(x.ndim) if self.axis is None else np.atleast_1d(self.axis)
        try:
            self.axes = tuple(sorted(int(a) % x.ndim for a in axes)) if x.ndim else ()
            if any(not -x.ndim <= int(a) < x.ndim for a in axes):
                raise IndexError
        except (IndexError, ZeroDivisionError):
            raise ValueError(f"sum/mean: axis {self.axis} out of range for shape "
                             f"{x.shape}") from None
        self.count = int(np.prod([x.shape[a] for a in self.axes]))
        return self.scale(x.sum(axis=self.axes, keepdims=self.keepdims))

    def scale(self, y):
        return y

    def backward(self, gy):
        kept = tuple(1 if i in self.axes else s for i, s in enumerate(self.in_shape))
        return self.scale(self.dev.xp.broadcast_to(gy.reshape(kept), self.in_shape))


class Mean(Sum):
    def scale(self, y):
        return y / max(self.count, 1)


class GetItem(Function):
    """Basic slicing: ints, slices, None and Ellipsis."""

    def __init__(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        for k in keys:
            if not (k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice))):
                raise TypeError(f"getitem supports basic slicing (int, slice, None, ...), "
                                f"got {type(k).__name__}")
        self.key = key

    def forward(self, x):
        self.in_shape, self.dtype = x.shape, x.dtype
        return x[self.key]

    def backward(self, gy):
        gx = self.dev.xp.zeros(self.in_shape, dtype=self.dtype)
        gx[self.key] = gy  # basic slices never overlap, so assignment is the scatter
        return gx


class Concat(Function):
    def __init__(self, axis=1):
        self.axis = axis

    def forward(self, *xs):
        ref = xs[0].shape
        for x in xs:
            if x.ndim != len(ref) or any(a != b for i, (a, b) in enumerate(zip(x.shape, ref))
                                         if i != self.axis % len(ref)):
                raise ValueError(f"concat along axis {self.axis}: shapes "
                                 f"{[x.shape for x in xs]} differ off that axis")
        self.splits = np.cumsum([x.shape[self.axis] for x in xs])[:-1]
        return self.dev.xp.concatenate(xs, axis=self.axis)

    def backward(self, gy):
        return tuple(self.dev.xp.split(gy, self.splits, axis=self.axis))


def add(a, b): return Add()(a, b)
def sub(a, b): return Sub()(a, b)
def mul(a, b): return Mul()(a, b)
def div(a, b): return Div()(a, b)
def neg(x): return Neg()(x)
def pow(x, c): return Pow(c)(x)  # noqa: A001
def exp(x): return Exp()(x)
def log(x): return Log()(x)
def matmul(a, b): return MatMul()(a, b)
def reshape(x, shape): return Reshape(shape)(x)
def transpose(x, axes=None): return Transpose(axes)(x)
def broadcast_to(x, shape): return BroadcastTo(shape)(x)
def sum(x, axis=None, keepdims=False): return Sum(axis, keepdims)(x)  # noqa: A001
def mean(x, axis=None, keepdims=False): return Mean(axis, keepdims)(x)
def getitem(x, key): return GetItem(key)(x)


def concat(tensors, axis=1):
    """Concatenate along ``axis`` (the ASPP branches and the decoder's skip join on channels)."""
    if len(tensors) == 0:
        raise ValueError("concat of an empty list")
    return Concat(axis)(*tensors)
