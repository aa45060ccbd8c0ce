"""The SRU's elementwise recurrence as a fused CPU kernel with its own backward pass.

For each batch row b and hidden unit j, from c_0 and the window's projections
u[b, t] = (x̃_t, f̃_t, r̃_t) and highway input x_t:

    f_t = σ(f̃_t + v_f c_{t-1} + b_f)        c_t = f_t c_{t-1} + (1 - f_t) x̃_t
    r_t = σ(r̃_t + v_r c_{t-1} + b_r)        h_t = r_t c_t + (1 - r_t) x_t

Every (b, j) is independent, so the kernels run in parallel over the batch and blocks of
hidden units (numba's prange), each walking its block along time, forwards for the outputs
and backwards (a reverse scan over the saved c_t and gates, so that no exponential is taken
twice) for the gradients. Done as a Python loop of small tensor operations per time step, the same work
costs a dispatch per operation and per step; here it is one call per window.

`params` stacks (v_f, v_r, b_f, b_r) as rows. The kernels take float32 or float64 arrays
(float64 for torch.autograd.gradcheck); numba compiles them on first use and caches the result.
On other devices than the CPU, `recurrence` runs `recurrence_reference`, the same formulas as
a loop of torch operations, whose backward torch derives.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

BLOCK = 64  # hidden units one parallel task walks along time together (contiguous in memory)


@njit(cache=True, inline="always")
def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@njit(cache=True, inline="always")
def _task(task: int, blocks: int, hidden: int) -> tuple[int, int, int]:
    """The batch row and the hidden units [low, high) that parallel task `task` walks along time."""
    low = (task % blocks) * BLOCK
    return task // blocks, low, min(low + BLOCK, hidden)


@njit(parallel=True, cache=True, fastmath=True)
def _forward_kernel(u: np.ndarray, xh: np.ndarray, params: np.ndarray, c0: np.ndarray, h: np.ndarray,
                    c: np.ndarray, gates: np.ndarray) -> None:  # pragma: no cover (compiled)
    """h and c of every step, and the gates f and r, which the backward pass reads back."""
    batch, steps, _, hidden = u.shape
    blocks = (hidden + BLOCK - 1) // BLOCK
    for task in prange(batch * blocks):
        b, low, high = _task(task, blocks, hidden)
        for t in range(steps):
            for j in range(low, high):
                previous = c0[b, j] if t == 0 else c[b, t - 1, j]
                f = _sigmoid(u[b, t, 1, j] + params[0, j] * previous + params[2, j])
                r = _sigmoid(u[b, t, 2, j] + params[1, j] * previous + params[3, j])
                now = f * previous + (1.0 - f) * u[b, t, 0, j]
                c[b, t, j] = now
                h[b, t, j] = r * now + (1.0 - r) * xh[b, t, j]
                gates[b, t, 0, j] = f
                gates[b, t, 1, j] = r


@njit(parallel=True, cache=True, fastmath=True)
def _backward_kernel(u: np.ndarray, xh: np.ndarray, params: np.ndarray, c0: np.ndarray, c: np.ndarray,
                     gates: np.ndarray, dh: np.ndarray, dc: np.ndarray, du: np.ndarray, dxh: np.ndarray,
                     dparams: np.ndarray) -> None:  # pragma: no cover (compiled)
    """On entry `dc` holds the gradient of the final c; on return, that of c_0. `dparams` gets
    each batch row's share of the parameters' gradient, summed afterwards (no two tasks write
    the same element)."""
    batch, steps, _, hidden = u.shape
    blocks = (hidden + BLOCK - 1) // BLOCK
    for task in prange(batch * blocks):
        b, low, high = _task(task, blocks, hidden)
        for t in range(steps - 1, -1, -1):
            for j in range(low, high):
                previous = c0[b, j] if t == 0 else c[b, t - 1, j]
                now = c[b, t, j]
                f = gates[b, t, 0, j]
                r = gates[b, t, 1, j]
                grad_h = dh[b, t, j]
                grad_c = dc[b, j] + grad_h * r
                grad_f = grad_c * (previous - u[b, t, 0, j]) * f * (1.0 - f)
                grad_r = grad_h * (now - xh[b, t, j]) * r * (1.0 - r)
                dxh[b, t, j] = grad_h * (1.0 - r)
                du[b, t, 0, j] = grad_c * (1.0 - f)
                du[b, t, 1, j] = grad_f
                du[b, t, 2, j] = grad_r
                dparams[b, 0, j] += grad_f * previous
                dparams[b, 1, j] += grad_r * previous
                dparams[b, 2, j] += grad_f
                dparams[b, 3, j] += grad_r
                dc[b, j] = grad_c * f + grad_f * params[0, j] + grad_r * params[1, j]


class FusedRecurrence(torch.autograd.Function):
    """The CPU kernels as one autograd operation: (h, final c) from (u, xh, params, c0)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, u: Tensor, xh: Tensor, params: Tensor,  # type: ignore[override]
                c0: Tensor) -> tuple[Tensor, Tensor]:
        u, xh, params, c0 = (t.detach().contiguous() for t in (u, xh, params, c0))
        h, c = torch.empty_like(xh), torch.empty_like(xh)
        gates = torch.empty(*xh.shape[:2], 2, xh.shape[2], dtype=xh.dtype)
        _forward_kernel(u.numpy(), xh.numpy(), params.numpy(), c0.numpy(), h.numpy(), c.numpy(), gates.numpy())
        ctx.save_for_backward(u, xh, params, c0, c, gates)
        return h, c[:, -1].clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dh: Tensor | None,  # type: ignore[override]
                 dc_last: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        u, xh, params, c0, c, gates = ctx.saved_tensors  # type: ignore[attr-defined]
        dh = torch.zeros_like(xh) if dh is None else dh.to(xh.dtype).contiguous()
        dc = torch.zeros_like(c0) if dc_last is None else dc_last.to(c0.dtype).contiguous().clone()
        du, dxh = torch.empty_like(u), torch.empty_like(xh)
        dparams = torch.zeros(u.shape[0], *params.shape, dtype=params.dtype)
        _backward_kernel(u.numpy(), xh.numpy(), params.numpy(), c0.numpy(), c.numpy(), gates.numpy(), dh.numpy(),
                         dc.numpy(), du.numpy(), dxh.numpy(), dparams.numpy())
        return du, dxh, dparams.sum(0), dc


def recurrence_reference(u: Tensor, xh: Tensor, params: Tensor, c0: Tensor) -> tuple[Tensor, Tensor]:
    """The recurrence as plain torch operations, one time step at a time (autograd's backward)."""
    v_f, v_r, b_f, b_r = params
    c, outputs = c0, []
    for t in range(u.shape[1]):
        f = torch.sigmoid(u[:, t, 1] + v_f * c + b_f)
        r = torch.sigmoid(u[:, t, 2] + v_r * c + b_r)
        c = f * c + (1 - f) * u[:, t, 0]
        outputs.append(r * c + (1 - r) * xh[:, t])
    return torch.stack(outputs, 1), c


def recurrence(u: Tensor, xh: Tensor, params: Tensor, c0: Tensor) -> tuple[Tensor, Tensor]:
    """h of shape (batch, time, hidden) and the final c of shape (batch, hidden), from u of shape
    (batch, time, 3, hidden), xh (batch, time, hidden), params (4, hidden) and c0 (batch, hidden),
    all of one floating dtype: the fused kernel on the CPU, the reference elsewhere."""
    if u.device.type == "cpu":
        return FusedRecurrence.apply(u, xh, params, c0)  # type: ignore[no-any-return]
    return recurrence_reference(u, xh, params, c0)
