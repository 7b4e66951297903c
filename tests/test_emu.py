"""The emulator itself (ARCHITECTURE.md s. 6): barriers, shared memory, 3-D indexing, atomics, the
checking mode's deadlock and out-of-bounds reports, and the build cache."""
from pathlib import Path

import numpy as np
import pytest

from minideeplab.device import get_device
from minideeplab.emu import runner
from minideeplab.kernels import BLOCK, loader

CASES = str(Path(__file__).parent / "kernels" / "emu_cases.cu")
DTYPES = [np.float32, np.float64]


def launch(kernel, grid, block, args, dtype=np.float64):
    emu = get_device("emu")
    emu.launch(emu.module(CASES, dtype), kernel, grid, block, args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_barrier_makes_the_tree_reduction_right(dtype):
    x = np.random.default_rng(0).standard_normal(700).astype(dtype)
    expected = np.add.reduceat(x.astype(np.float64), [0, 256, 512])
    out = np.zeros(3, dtype)
    launch("block_sum", 3, 256, (x, out, x.size), dtype)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    launch("block_sum_racy", 3, 256, (x, out, x.size), dtype)
    assert not np.allclose(out, expected, rtol=1e-3)  # so the barrier, not luck, made it right


def test_shared_memory_is_per_block():
    out = np.zeros(3 * 100)
    launch("neighbour", 3, 100, (out,))
    b, t = np.divmod(np.arange(300), 100)
    np.testing.assert_array_equal(out, 1000 * b + (t + 1) % 100)


def test_3d_grid_and_block_coordinates():
    grid, block = (2, 3, 2), (4, 2, 3)
    out = np.full((2, 3, 2, 3, 2, 4, 12), -1, np.int32)  # (gz, gy, gx, bz, by, bx, 12)
    launch("coordinates", grid, block, (out,))
    bz, by, bx, tz, ty, tx = np.indices(out.shape[:6])
    expected = np.stack([tx, ty, tz, bx, by, bz] + [np.full_like(tx, v) for v in block + grid], -1)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_atomic_add(dtype):
    labels = np.random.default_rng(1).integers(0, 5, 1000).astype(np.int32)
    counts, total = np.zeros(5, dtype), np.zeros(1, np.int32)
    launch("histogram", 4, 256, (labels, counts, total, labels.size), dtype)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=5))
    assert total[0] == 1000


@pytest.mark.parametrize("dtype", DTYPES)
def test_math_builtins(dtype):
    x = np.array([-2.5, -0.3, 0.7, 1.0, 3.2], dtype)
    out = np.zeros((5, 9), dtype)
    launch("math", 1, 32, (x, out, x.size), dtype)
    a = np.abs(x)
    expected = [np.exp(x), np.log(a), np.sqrt(a), 1 / np.sqrt(a), np.floor(x), np.minimum(x, 0.5),
                np.maximum(x, 0.5), np.minimum(x, -0.5), np.maximum(x, -0.5)]
    np.testing.assert_allclose(out, np.stack(expected, 1), rtol=1e-6)
    x32, out32 = x.astype(np.float32), np.zeros((5, 4), np.float32)
    launch("math_float", 1, 32, (x32, out32, x.size), dtype)
    expected = [np.exp(x32) + np.log(np.abs(x32)), np.ones(5), np.floor(x32),
                np.minimum(x32, 0.5) + np.maximum(x32, 0.5)]
    np.testing.assert_allclose(out32, np.stack(expected, 1), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_min_and_max_of_nan_are_cudas(dtype):
    """CUDA's min/max on reals are fmin/fmax, which return the other operand of a NaN (IEEE
    754 minNum/maxNum, not NumPy's np.minimum): the emulator's give the same, so a kernel that
    selects with them gives the GPU's answer on emu. (The ops' kernels keep NaN with explicit
    tests instead: kernels/relu.cuh.)"""
    out = np.zeros((1, 9), dtype)
    launch("math", 1, 32, (np.array([np.nan], dtype), out, 1), dtype)
    assert np.isnan(out[0, :5]).all()
    np.testing.assert_array_equal(out[0, 5:], [0.5, 0.5, -0.5, -0.5])


HELPERS = """#include "twice.cuh"
extern "C" __global__ void twice_block_sum(const real* x, real* out) {
  __shared__ real partial[BLOCK];
  const real s = twice_sum(partial, x[blockIdx.x * blockDim.x + threadIdx.x]);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}
extern "C" __global__ void copy(const real* x, real* y) { y[threadIdx.x] = x[threadIdx.x]; }
"""


def test_a_barrier_in_an_included_helper_is_found(tmp_path):
    # twice.cuh, next to the .cu file, includes kernels/block_reduce.cuh, whose block_tree_sum has
    # the barriers: twice_block_sum reaches them through two helpers, copy does not.
    (tmp_path / "twice.cuh").write_text('#include "block_reduce.cuh"\n__device__ real twice_sum('
                                        'real* p, real v) { return 2 * block_tree_sum(p, v); }\n')
    (tmp_path / "helpers.cu").write_text(HELPERS)
    emu = get_device("emu")
    module = emu.module(str(tmp_path / "helpers.cu"), np.float64)
    assert {k.name: k.syncs for k in module.kernels.values()} == {"twice_block_sum": True,
                                                                  "copy": False}
    x, out = np.random.default_rng(3).standard_normal((3, BLOCK)), np.zeros(3)
    emu.launch(module, "twice_block_sum", 3, BLOCK, (x, out))
    np.testing.assert_allclose(out, 2 * x.sum(axis=1), rtol=1e-12)


def test_deadlock_is_reported():
    with pytest.raises(runner.KernelError, match=r"early_exit: deadlock in block \(0,0,0\): "
                                                 r"59 of 64 threads wait"):
        launch("early_exit", 1, 64, (np.zeros(64),))
    with pytest.raises(runner.KernelError, match="divergent_barrier: .* different __syncthreads"):
        launch("divergent_barrier", 1, 64, (np.zeros(64),))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, shift, arg, where", [
    ("shifted_read", 1, "x", "element 37, 0 past the end"),
    ("shifted_write", 1, "y", "element 37, 0 past the end"),
    ("shifted_write", 300, "y", "past the end"),
])
def test_out_of_bounds_is_reported(dtype, kernel, shift, arg, where):
    x, y = np.ones(37, dtype), np.zeros(37, dtype)
    with runner.check_mode(), pytest.raises(runner.KernelError, match=f"{kernel}: out-of-bounds "
                                            f"access to argument '{arg}' .*{where}"):
        launch(kernel, 2, 32, (x, y, x.size, shift), dtype)


def test_write_before_the_start_is_reported(monkeypatch):
    monkeypatch.setenv("MINIDEEPLAB_EMU_CHECK", "1")  # the environment's switch, not check_mode()
    with pytest.raises(runner.KernelError, match="before the start of argument 'y'"):
        launch("shifted_write", 2, 32, (np.ones(37), np.zeros(37), 37, -1))


def test_checking_mode_gives_the_same_numbers():
    x = np.random.default_rng(2).standard_normal(300)
    results = []
    for on in (False, True):
        out = np.zeros(2)
        with runner.check_mode(on):
            launch("block_sum", 2, 256, (x, out, x.size))
        results.append(out)
    np.testing.assert_array_equal(*results)


def test_arguments_are_checked():
    y = np.zeros(8)
    with pytest.raises(ValueError, match=r"shifted_read: argument 'x' \(const real\*\) needs a "
                                         r"C-contiguous float64 array, got float32 shape \(8,\)"):
        launch("shifted_read", 1, 8, (np.zeros(8, np.float32), y, 8, 0))
    with pytest.raises(ValueError, match=r"argument 'x' .* got float64 shape \(8,\) \(strided\)"):
        launch("shifted_read", 1, 8, (np.zeros(16)[::2], y, 8, 0))
    with pytest.raises(ValueError, match="argument 'n' \\(long long\\) needs a number"):
        launch("shifted_read", 1, 8, (y, y, y, 0))
    with pytest.raises(ValueError, match="takes 4 arguments"):
        launch("shifted_read", 1, 8, (y, y, 8))
    with pytest.raises(ValueError, match="more than 1024 threads"):
        launch("shifted_read", 1, (64, 32), (y, y, 8, 0))


def test_outside_the_checking_mode_each_signature_is_checked_once(monkeypatch):
    checked = []
    full = loader.convert_args
    monkeypatch.setattr(loader, "convert_args", lambda *a: checked.append(1) or full(*a))
    x, y = np.arange(8.0), np.zeros(8)
    with runner.check_mode(False):
        for _ in range(3):  # one signature: checked once, then trusted
            launch("shifted_read", 1, 8, (x, y, 8, 0))
        assert len(checked) == 1 and (y == x).all()
        # Another shape, stride, dtype, integer or writeability: a new signature, checked.
        with pytest.raises(ValueError, match=r"argument 'x' .* \(strided\)"):
            launch("shifted_read", 1, 8, (np.zeros(16)[::2], y, 8, 0))
        y.flags.writeable = False
        with pytest.raises(ValueError, match="argument 'y' .* is written, but the array is read-"):
            launch("shifted_read", 1, 8, (x, y, 8, 0))
        with pytest.raises(ValueError, match=r"does not fit in int64"):
            launch("shifted_read", 1, 8, (x, np.zeros(8), 8, 2**63))
    with runner.check_mode(True):  # the tests' mode: every launch is checked
        launch("shifted_read", 1, 8, (x, np.zeros(8), 8, 0))
        launch("shifted_read", 1, 8, (x, np.zeros(8), 8, 0))
    assert len(checked) == 6


def test_the_cache_reuses_a_build(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDEEPLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(loader, "_modules", {})
    builds = []
    compile_ = runner._compile
    monkeypatch.setattr(runner, "_compile", lambda *a: builds.append(a) or compile_(*a))
    emu = get_device("emu")
    assert emu.module("activation", np.float32) is emu.module("activation", np.float32)
    loader._modules.clear()  # as in a new process
    module = emu.module("activation", np.float32)
    assert len(builds) == 1 and len(list(tmp_path.glob("emu/*.so"))) == 1
    x, y = np.array([-1.0, 2.0], np.float32), np.zeros(2, np.float32)
    emu.launch(module, "relu_forward", 1, 32, (x, y, 2))
    np.testing.assert_array_equal(y, [0, 2])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no stamp"])
def test_a_damaged_cached_build_is_built_again(tmp_path, monkeypatch, damage):
    # A truncated library would kill the process at load (SIGBUS), a garbage one fail with
    # "invalid ELF header": the stamp written after each build tells an intact one apart.
    monkeypatch.setenv("MINIDEEPLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(loader, "_modules", {})
    emu = get_device("emu")
    emu.module("activation", np.float32)
    (so,) = tmp_path.glob("emu/activation-float-*.so")
    data = so.read_bytes()
    if damage != "no stamp":  # a new file: this process has the old one mapped
        so.unlink()
        so.write_bytes(data[:4096] if damage == "truncated" else b"not a library" * 100)
    else:
        so.with_suffix(".stamp").unlink()
    loader._modules.clear()  # as in a new process
    builds = []
    compile_ = runner._compile
    monkeypatch.setattr(runner, "_compile", lambda *a: builds.append(a) or compile_(*a))
    x, y = np.array([-1.0, 2.0], np.float32), np.zeros(2, np.float32)
    emu.launch(emu.module("activation", np.float32), "relu_forward", 1, 32, (x, y, 2))
    np.testing.assert_array_equal(y, [0, 2])
    assert len(builds) == 1 and so.stat().st_size == len(data)


def test_an_unwritable_cache_is_named(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MINIDEEPLAB_CACHE", str(blocked))
    monkeypatch.setattr(loader, "_modules", {})
    with pytest.raises(RuntimeError, match=r"emu kernel cache .*file/emu is not writable .* "
                                           r"MINIDEEPLAB_CACHE"):
        get_device("emu").module("activation", np.float64)


def test_an_edited_source_or_header_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDEEPLAB_CACHE", str(tmp_path))
    header, source = tmp_path / "value.cuh", tmp_path / "edited.cu"
    header.write_text("__device__ real value() { return 1; }\n")
    source.write_text('#include "value.cuh"\n'
                      'extern "C" __global__ void put(real* y) { y[0] = value(); }\n')
    emu = get_device("emu")

    def put():
        y = np.zeros(1)
        emu.launch(emu.module(str(source), np.float64), "put", 1, 1, (y,))
        return y[0]

    assert put() == 1
    header.write_text("__device__ real value() { return 20; }\n")
    assert put() == 20
    source.write_text(source.read_text().replace("= value()", "= -value()"))
    assert put() == -20
    assert len(list(tmp_path.glob("emu/edited-double-*.so"))) == 3


def test_compile_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDEEPLAB_CACHE", str(tmp_path))
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void broken(real* y) { y[0] = undeclared_name; }\n')
    with pytest.raises(RuntimeError, match="broken.cu .*(?s:.*)undeclared_name"):
        get_device("emu").module(str(broken), np.float64)


def test_a_missing_compiler_is_named(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr(loader, "_modules", {})
    with pytest.raises(RuntimeError, match="install g\\+\\+"):
        get_device("emu").module("activation", np.float64)
