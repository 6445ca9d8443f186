"""The SSM sublayer of MEGA / LongVQ: multi-dimensional damped EMA (default) or S4D, as a long convolution.

Spec: ``docs/longvq.md``
  §1.2(a)  damped EMA: ``p = σ(δ_raw)``, ``a = σ(α_raw)``, ``q = 1 − p·a``, kernel
           ``K[j, ℓ] = Σ_k γ[j,k]·h^{-1/2}·p[j,k]·β[j,k]·q[j,k]^ℓ`` (Vandermonde in log space), convolution by
           FFT, the bidirectional form ``y_t = Σ_{s≤t} K1[t−s] x_s + Σ_{s≥t} K2[s−t] x_s`` (lag 0 counted by
           both kernels), pads zeroed first, output ``SiLU(y + ω⊙x)``; init of §1.2(a),
  §1.6     ``ssm: ema|s4d`` and ``truncation`` (kernel length ``min(T, truncation)``).

S4D (``ssm: s4d``) is the diagonal state space of Gu et al. 2022 with the S4D-Lin init
(``A_n = −1/2 + iπn``, ``log Δ ~ U[log 1e-3, log 1e-1]``, ZOH): ``K[ℓ] = 2·Re Σ_n C_n (e^{ΔA_n} − 1)/A_n e^{ΔA_n ℓ}``
with ``n_dim / 2`` complex modes per channel. Shapes: ``x [B, T, D]`` (batch first), ``mask [B, T]`` (True = real).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SSM_TYPES = ("ema", "s4d", "none")


def fft_conv(x: Tensor, k: Tensor) -> Tensor:
    """Causal convolution ``y_t = Σ_{ℓ<len(k)} k[ℓ] x_{t−ℓ}`` per channel: x [B,T,D], k [D,L] -> [B,T,D]."""
    T, n = x.shape[1], 2 * x.shape[1]
    y = torch.fft.irfft(torch.fft.rfft(x.transpose(1, 2), n=n) * torch.fft.rfft(k, n=n), n=n)[..., :T]
    return y.transpose(1, 2).to(x.dtype)


class _LongConv(nn.Module):
    """Shared wiring: kernel(s) of ``2d`` channels if bidirectional else ``d``; residual ``ω⊙x``; SiLU."""

    def __init__(self, d_model: int, n_dim: int, bidirectional: bool, truncation: int | None):
        super().__init__()
        self.d_model, self.n_dim, self.bidirectional, self.truncation = d_model, n_dim, bidirectional, truncation
        self.channels = 2 * d_model if bidirectional else d_model
        self.omega = nn.Parameter(torch.randn(d_model))

    def kernel(self, length: int) -> Tensor:  # [channels, length]
        raise NotImplementedError

    def conv(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The SSM output ``y`` alone (no residual, no activation)."""
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        T = x.shape[1]
        k = self.kernel(min(T, self.truncation or T)).to(x.dtype)
        if not self.bidirectional:
            return fft_conv(x, k)
        k1, k2 = k.split(self.d_model, dim=0)
        return fft_conv(x, k1) + fft_conv(x.flip(1), k2).flip(1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y = self.conv(x, mask)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        return F.silu(y + self.omega.to(x.dtype) * x)

    def recurrence(self) -> tuple[Tensor, Tensor, Tensor]:
        """(w, log λ, c), each [D, N], of the causal recurrence ``h_t = λ h_{t−1} + w x_t``,
        ``y_t = Re Σ_n c_n h_t[n]``, whose impulse response is the causal kernel."""
        raise NotImplementedError

    def carry(self, x: Tensor, mask: Tensor | None, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """The causal sublayer on a window that continues a sequence: ``state`` [B, D, N] is the hidden state
        after the previous window (None: the sequence starts here). Returns (output, state after this window);
        windows chained this way equal one call on their concatenation."""
        if self.bidirectional or self.truncation:
            raise ValueError("an SSM state can be carried only by the causal, untruncated SSM (truncation: null)")
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        y = self.conv(x)
        with torch.autocast(x.device.type, enabled=False):   # the carried state stays in the parameters' precision
            w, log_lam, c = self.recurrence()
            T = x.shape[1]
            powers = torch.exp(log_lam[..., None] * torch.arange(T + 1, device=x.device, dtype=log_lam.real.dtype))
            new = torch.einsum("btd,dn,dnt->bdn", x.to(w.dtype), w, powers[..., :T].flip(-1))  # Σ_s λ^{T−1−s} w x_s
            if state is not None:
                y = y + torch.einsum("bdn,dn,dnt->btd", state, c, powers[..., 1:]).real.to(y.dtype)
                new = new + powers[..., T] * state
        return F.silu(y + self.omega.to(x.dtype) * x), new


class DampedEMA(_LongConv):
    """MEGA's ``MultiHeadEMA`` (§1.2a): per channel ``h_t = p β x_t + (1 − p a) h_{t−1}``, ``y_t = Σ_k γ h^{-1/2} h_t``."""

    def __init__(self, d_model: int, n_dim: int = 16, bidirectional: bool = True, truncation: int | None = None):
        super().__init__(d_model, n_dim, bidirectional, truncation)
        D, h = self.channels, n_dim
        self.delta = nn.Parameter(torch.randn(D, h, 1) * 0.2)
        self.alpha = nn.Parameter(torch.randn(D, h, 1) * 0.2)
        sign = torch.ones(h, 1)
        sign[1::2] = -1.0                                  # β init: N(0, 0.02) + [1, −1, 1, −1, ...]
        self.beta = nn.Parameter(torch.randn(D, h, 1) * 0.02 + sign)
        self.gamma = nn.Parameter(torch.randn(D, h))
        self.scale = math.sqrt(1.0 / n_dim)

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """(input weight ``p·β`` [D,h,1], decay ``q`` [D,h,1])."""
        p = torch.sigmoid(self.delta)
        q = 1.0 - p * torch.sigmoid(self.alpha)
        return p * self.beta, q

    def recurrence(self):
        pb, q = self.coefficients()
        return pb[..., 0], torch.log(q[..., 0]), self.gamma * self.scale

    def kernel(self, length: int) -> Tensor:
        pb, q = self.coefficients()
        vander = torch.arange(length, dtype=pb.dtype, device=pb.device) * torch.log(q)   # [D,h,L]
        return torch.einsum("dhl,dh->dl", pb * torch.exp(vander), self.gamma * self.scale)


class S4D(_LongConv):
    """Diagonal SSM (S4D-Lin init, ZOH) with ``n_dim // 2`` complex modes per channel."""

    def __init__(self, d_model: int, n_dim: int = 16, bidirectional: bool = True, truncation: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__(d_model, n_dim, bidirectional, truncation)
        D, N = self.channels, max(1, n_dim // 2)
        self.log_dt = nn.Parameter(torch.rand(D) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_a_real = nn.Parameter(torch.full((D, N), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(N, dtype=torch.float32).repeat(D, 1))
        self.c = nn.Parameter(torch.randn(D, N, 2) * math.sqrt(0.5))

    def modes(self) -> tuple[Tensor, Tensor, Tensor]:
        """(ΔA [D,N], B̄ = (e^{ΔA} − 1)/A [D,N], C [D,N]) as complex tensors."""
        a = torch.complex(-torch.exp(self.log_a_real), self.a_imag)
        dta = a * torch.exp(self.log_dt)[:, None]
        return dta, (torch.exp(dta) - 1.0) / a, torch.view_as_complex(self.c.contiguous())

    def recurrence(self):
        dta, b_bar, c = self.modes()
        return b_bar, dta, 2 * c

    def kernel(self, length: int) -> Tensor:
        dta, b_bar, c = self.modes()
        pos = torch.arange(length, device=dta.device, dtype=self.log_dt.dtype)
        return 2 * torch.einsum("dn,dnl->dl", c * b_bar, torch.exp(dta[..., None] * pos)).real


def build_ssm(kind: str, d_model: int, n_dim: int, bidirectional: bool, truncation: int | None):
    if kind == "ema":
        return DampedEMA(d_model, n_dim, bidirectional, truncation)
    if kind == "s4d":
        return S4D(d_model, n_dim, bidirectional, truncation)
    if kind == "none":
        return None
    raise ValueError(f"ssm={kind!r} is invalid: choose one of {list(SSM_TYPES)}")


__all__ = ["DampedEMA", "S4D", "SSM_TYPES", "build_ssm", "fft_conv"]
