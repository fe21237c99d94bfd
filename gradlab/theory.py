"""Mean-field predictions of how fast BPTT gradients decay at initialisation, per cell: the factor per step
of ||dL/dh_t|| (and the time scale -1 / ln factor), the init_scale where it crosses 1 (the edge of chaos),
and the scale that puts a cell there (init 'critical'). The derivation and its assumptions: docs/mean_field.md.

Sources: Poole et al. 2016 (transient chaos), Schoenholz et al. 2017 (deep information propagation; the
gradient-independence assumption), Chen, Pennington and Schoenholz 2018 (mean-field theory of RNNs), Gilboa
et al. 2019 (mean-field theory of LSTMs and GRUs). numpy only: no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

Z_RANGE = 9.0  # standard deviations each side of the mean: the normal density beyond is under 1e-17
PER_UNIT = 8  # grid points per unit of pre-activation: tanh and sigmoid (poles pi/2 off the real axis) then integrate to ~1e-15
FIXED_POINT_STEPS = 2000  # iterations of the variance map (it contracts; stops early at 1e-13)


@lru_cache(maxsize=64)
def _trapezoid(half: int) -> tuple[np.ndarray, np.ndarray]:
    z = np.linspace(-Z_RANGE, Z_RANGE, 2 * half + 1)
    return z, np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi) * (z[1] - z[0])


def normal_nodes(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights w with sum w f(scale z) = E[f(scale Z)], Z ~ N(0, 1), for f that varies on a
    unit scale (tanh, sigmoid and their derivatives): the trapezoid rule, spectrally accurate for smooth
    integrands that decay fast, on a grid fine enough for the wide Gaussians of large weights (Gauss-Hermite
    with a fixed number of nodes misses the narrow peak of tanh'(a)^2 once the variance is large)."""
    dz = min(0.25, 1 / (PER_UNIT * max(scale, 1e-12)))
    half = 16 * math.ceil(Z_RANGE / dz / 16)  # a few grid sizes serve every scale (cached)
    return _trapezoid(half)


def gauss(f, mean: float | np.ndarray = 0.0, var: float | np.ndarray = 1.0):
    """E[f(mean + sqrt(var) Z)], Z ~ N(0, 1); mean and var may be arrays (then one expectation per
    element, over a new last axis)."""
    mean, var = np.asarray(mean, float)[..., None], np.maximum(np.asarray(var, float), 0.0)[..., None]
    x, w = normal_nodes(float(np.sqrt(var.max())))
    return (f(mean + np.sqrt(var) * x) * w).sum(-1)


def sigmoid(a):
    return 0.5 * (1 + np.tanh(0.5 * a))


def dsigmoid(a):
    s = sigmoid(a)
    return s * (1 - s)


def dtanh(a):
    return 1 - np.tanh(a) ** 2


@dataclass(frozen=True)
class Setting:
    """What the prediction needs from a cell's initialisation and its inputs."""

    gain: float  # mean squared singular value of each recurrent matrix (init_scale^2 for orthogonal ones)
    input_var: float  # variance of each unit's input contribution x W_x: sigma_in^2
    forget_bias: float = 0.0  # the LSTM forget gate's bias


def recurrent_gain(init: str, hidden_size: int, init_scale: float | None) -> float:
    """Mean squared singular value of a recurrent matrix: exactly init_scale^2 for orthogonal matrices; for
    the i.i.d. inits, H Var(w) without init_scale, and init_scale^2 / 4 with it (a square matrix of i.i.d.
    entries has its largest singular value near 2 sqrt(H Var(w)): Marchenko-Pastur). init 'paper' of a classic cell is uniform."""
    init = "uniform" if init == "paper" else init
    if init in ("orthogonal", "critical"):
        return (1.0 if init_scale is None else init_scale) ** 2
    if init_scale is not None:
        return init_scale**2 / 4
    H = hidden_size
    return {"normal": H * 1e-4, "xavier": H * 2 / (2 * H), "uniform": 1 / 3}[init]


def input_variance(init: str, input_size: int, hidden_size: int, input_std: float) -> float:
    """sigma_in^2 = input_std^2 sum_i W_x[i, j]^2, averaged over units j, for inputs of i.i.d. N(0, input_std^2)."""
    I, H = input_size, hidden_size
    init = "uniform" if init == "paper" else init
    per_unit = {"orthogonal": min(I, H) / H, "critical": min(I, H) / H, "normal": I * 1e-4, "xavier": I * 2 / (I + H),
                "uniform": I / (3 * H)}[init]
    return input_std**2 * per_unit


def _fixed_point(step, start: float) -> float:
    """q = step(q) by Steffensen's method (Aitken's extrapolation of two plain steps), falling back to the
    plain step where the extrapolation would leave q >= 0; a variance map contracts, but slowly near the edge."""
    q = start
    for _ in range(FIXED_POINT_STEPS):
        q1 = step(q)
        if abs(q1 - q) < 1e-13 * max(1.0, q):
            return q1
        q2 = step(q1)
        if abs(q2 - q1) < 1e-13 * max(1.0, q1):
            return q2
        curvature = q2 - 2 * q1 + q
        jump = q - (q1 - q) ** 2 / curvature if curvature != 0 else q2
        q = jump if math.isfinite(jump) and jump >= 0 else q2
    return q


def rnn(s: Setting) -> float:
    """tanh RNN: q* = gain E[tanh(sqrt(q*) Z)^2] + sigma_in^2; factor = sqrt(gain E[tanh'(sqrt(q*) Z)^2])."""
    q = _fixed_point(lambda q: s.gain * gauss(lambda a: np.tanh(a) ** 2, 0.0, q) + s.input_var, 1.0)
    return math.sqrt(s.gain * gauss(lambda a: dtanh(a) ** 2, 0.0, q))


def gru(s: Setting) -> float:
    """GRU (reset_after, zero biases): h' = z h + (1 - z) n, n = tanh(s + r u) with s = x W_xh, u = h W_hh.
    State variance Q: Q (1 - E[z^2]) = E[(1 - z)^2] E[n^2]. The squared-norm factor sums the paths back to
    h: through z directly, through n via W_hh, through r via W_hr, and through z's gate via W_hz."""
    g, v = s.gain, s.input_var

    def moments(Q: float) -> dict[str, float]:
        gate_std = math.sqrt(v + g * Q)  # every gate's pre-activation: N(0, sigma_in^2 + gain Q)
        x, w = normal_nodes(gate_std)
        a_r = gate_std * x  # (N,) the reset gate's pre-activation, weights w
        r = sigmoid(a_r)
        n_var = v + r**2 * g * Q  # (N,) a_n = s + r u given r: N(0, sigma_in^2 + r^2 gain Q)
        # E_u E_s[u^2 tanh'(s + r u)^2] in one dimension: with t = s + r u ~ N(0, V), E[u^2 | t] = gQ (1 - r slope) + (slope t)^2, slope = r gQ / V
        slope = np.divide(r * g * Q, n_var, out=np.zeros_like(n_var), where=n_var > 0)  # E[u | t] = slope t
        u2_dn2 = g * Q * (1 - r * slope) * gauss(lambda a: dtanh(a) ** 2, 0.0, n_var) \
            + slope**2 * gauss(lambda a: a**2 * dtanh(a) ** 2, 0.0, n_var)
        return {"n2": float((w * gauss(lambda a: np.tanh(a) ** 2, 0.0, n_var)).sum()),
                "r2_dn2": float((w * r**2 * gauss(lambda a: dtanh(a) ** 2, 0.0, n_var)).sum()),
                "dr2_u2_dn2": float((w * dsigmoid(a_r) ** 2 * u2_dn2).sum())}

    z_var = lambda Q: v + g * Q  # noqa: E731
    ez2 = lambda Q: gauss(lambda a: sigmoid(a) ** 2, 0.0, z_var(Q))  # noqa: E731
    e1z2 = lambda Q: gauss(lambda a: (1 - sigmoid(a)) ** 2, 0.0, z_var(Q))  # noqa: E731
    Q = _fixed_point(lambda Q: e1z2(Q) * moments(Q)["n2"] / (1 - ez2(Q)), 0.5)
    m = moments(Q)
    dz2 = gauss(lambda a: dsigmoid(a) ** 2, 0.0, z_var(Q))
    chi = ez2(Q) + e1z2(Q) * g * (m["r2_dn2"] + m["dr2_u2_dn2"]) + g * (Q + m["n2"]) * dz2
    return math.sqrt(chi)


def lstm(s: Setting) -> float:
    """LSTM (zero biases but the forget gate's): c' = f c + i g, h' = o tanh(c'). Q_c = E[i^2] E[g^2] / (1 - E[f^2]),
    Q_h = E[o^2] E[tanh(c)^2]. Backward, the mean squared gradients of (h, c) map by a 2 x 2 matrix M per step;
    the factor is the square root of its largest eigenvalue."""
    g, v, b = s.gain, s.input_var, s.forget_bias

    def cell_var(Qh: float) -> float:
        q = v + g * Qh  # every gate's pre-activation variance
        return gauss(lambda a: sigmoid(a) ** 2, 0.0, q) * gauss(lambda a: np.tanh(a) ** 2, 0.0, q) / (1 - gauss(lambda a: sigmoid(a) ** 2, b, q))

    def hidden_var(Qh: float) -> float:
        q = v + g * Qh
        return gauss(lambda a: sigmoid(a) ** 2, 0.0, q) * gauss(lambda a: np.tanh(a) ** 2, 0.0, cell_var(Qh))

    Qh = _fixed_point(hidden_var, 0.5)
    Qc, q = cell_var(Qh), v + g * Qh
    e = lambda f, mean=0.0, var=q: gauss(f, mean, var)  # noqa: E731
    i2, f2, o2 = e(lambda a: sigmoid(a) ** 2), e(lambda a: sigmoid(a) ** 2, b), e(lambda a: sigmoid(a) ** 2)
    gg2, dtc2, tc2 = e(lambda a: np.tanh(a) ** 2), e(lambda a: dtanh(a) ** 2, 0.0, Qc), e(lambda a: np.tanh(a) ** 2, 0.0, Qc)
    A = Qc * e(lambda a: dsigmoid(a) ** 2, b) + gg2 * e(lambda a: dsigmoid(a) ** 2) + i2 * e(lambda a: dtanh(a) ** 2)
    B = tc2 * e(lambda a: dsigmoid(a) ** 2)
    M = np.array([[g * (A * o2 * dtc2 + B), g * A], [f2 * o2 * dtc2, f2]])  # (h, c) mean squares at t -> at t - 1
    return math.sqrt(max(np.linalg.eigvals(M).real))


PREDICTORS = {"linear": lambda s: math.sqrt(s.gain), "rnn": rnn, "gru": gru, "lstm": lstm}


@lru_cache(maxsize=4096)  # a run asks for the same setting once per probe, impl and hidden size
def factor(cell: str, setting: Setting) -> float:
    """The predicted factor per step of ||dL/dh_t|| far from the loss."""
    return PREDICTORS[cell](setting)


def time_scale(f: float) -> float:
    """Steps for the norm to fall by e: -1 / ln factor (inf at factor 1; negative when it grows)."""
    return math.inf if f == 1 else -1 / math.log(f)


MODERN = ("lru", "mingru", "minlstm")  # h_t = a_t * h_{t-1} + b_t, a_t free of h: no mean field to solve, a_t's own law


def gate_variance(init: str, input_size: int, hidden_size: int, input_std: float) -> float:
    """Variance of a min cell's gate pre-activation x W_x (one unit), for inputs i.i.d. N(0, input_std^2): its weight
    column's squared norm times input_std^2 (nn.Linear's U(-1/sqrt(I), 1/sqrt(I)) under uniform and paper)."""
    I, H = input_size, hidden_size
    per_unit = {"normal": I * 1e-4, "xavier": I * 2 / (I + H), "orthogonal": min(I, H) / H, "uniform": 1 / 3, "paper": 1 / 3}[init]
    return input_std**2 * per_unit


def modern_factor(cell: str, init: str, init_scale: float | None, forget_bias: float, input_size: int, hidden_size: int,
                  input_std: float, typical: bool = False) -> float:
    """The factor per step of ||dL/dh_t|| for the modern cells: exactly dL/dh_t = dL/dh_T prod a_s (element-wise), and
    the a_s of different steps are independent (they read independent inputs), so the mean square falls by E[a^2] per
    step: the factor is sqrt(E[a^2]). lru: a = |lambda|, the radius init_scale (NaN for the ring: several rates, no
    one factor). mingru: a = 1 - z = sigmoid(-u), u ~ N(-forget_bias, v). minlstm: a = f' = sigmoid(-d),
    d = softplus(-u_f) - softplus(-u_i), u_f ~ N(forget_bias, v), u_i ~ N(0, v) independent. v = gate_variance;
    the biases' own spread under uniform and paper (1 / (3I), fixed per unit) is left out.

    typical: exp(E[log a]) instead, the factor of a typical product of the a's. The product of k of them is
    log-normal-like: its mean square, sqrt(E[a^2])^(2k), is carried by ever rarer sequences as k grows, so a finite
    batch's RMS norm falls from the first towards the second far from the loss (measured: tests/test_theory.py)."""
    if cell == "lru":
        return float("nan") if init_scale is None else float(init_scale)
    v = gate_variance(init, input_size, hidden_size, input_std)
    moment = (lambda a: np.log(a)) if typical else (lambda a: a**2)  # noqa: E731
    finish = (lambda m: math.exp(m)) if typical else (lambda m: math.sqrt(m))  # noqa: E731
    softplus = lambda a: np.logaddexp(0.0, a)  # noqa: E731
    if cell == "mingru":
        return finish(gauss(lambda u: moment(sigmoid(-u)), -forget_bias, v))
    z, w = normal_nodes(math.sqrt(v))
    u_f, u_i = forget_bias + math.sqrt(v) * z[:, None], math.sqrt(v) * z[None, :]
    kept = sigmoid(-(softplus(-u_f) - softplus(-u_i)))
    return finish(float((w[:, None] * w[None, :] * moment(kept)).sum()))


def predict(cell: str, init: str, init_scale: float | None, forget_bias: float, input_size: int, hidden_size: int,
            input_std: float) -> float:
    """The predicted factor per step for a cell built by gradlab.cells.create with these arguments."""
    if cell in MODERN:
        return modern_factor(cell, init, init_scale, forget_bias, input_size, hidden_size, input_std)
    if init == "critical":  # orthogonal at the edge's scale: the factor is 1 up to the bisection's precision
        init_scale = edge_init_scale(cell, "orthogonal", forget_bias, input_size, hidden_size, input_std)
    setting = Setting(recurrent_gain(init, hidden_size, init_scale), input_variance(init, input_size, hidden_size, input_std), forget_bias)
    return factor(cell, setting)


def first_crossing(f, low: float, high: float, points: int = 120) -> float:
    """The smallest x in [low, high] where f(x) - 1 changes sign (a log-spaced scan that stops at the first
    change, then bisection); NaN if none."""
    grid = np.geomspace(low, high, points)
    before = f(grid[0]) - 1.0
    for k in range(points - 1):
        after = f(grid[k + 1]) - 1.0
        if before <= 0 < after or before >= 0 > after:
            lo, hi, rising = math.log(grid[k]), math.log(grid[k + 1]), before < after
            for _ in range(40):  # the bracket is a 1/120 of the log range: 40 halvings reach float precision
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if (f(math.exp(mid)) - 1.0 < 0) == rising else (lo, mid)
            return math.exp((lo + hi) / 2)
        before = after
    return math.nan


@lru_cache(maxsize=256)
def edge_of_chaos(cell: str, input_var: float, forget_bias: float = 0.0, low: float = 1e-3, high: float = 20.0) -> float:
    """The orthogonal recurrent scale rho whose predicted factor first reaches 1; NaN when it never does in [low, high]."""
    return first_crossing(lambda rho: factor(cell, Setting(rho**2, input_var, forget_bias)), low, high)


def edge_init_scale(cell: str, init: str, forget_bias: float, input_size: int, hidden_size: int, input_std: float,
                    low: float = 1e-3, high: float = 20.0) -> float:
    """The init_scale whose predicted factor first reaches 1 for this init and input (NaN when it never does)."""
    return first_crossing(lambda s: predict(cell, init, s, forget_bias, input_size, hidden_size, input_std), low, high)


# The curse of memory (Zucchet and Orvieto 2024; docs/curse_of_memory.md): h_t = lambda h_{t-1} + gamma x_t per unit (or
# complex mode) with white-noise input of power beta = E|x_t|^2, h_{-1} = 0, so that h_t = gamma sum_{k<n} lambda^k x_{t-k},
# n = t + 1. Everything below is a finite geometric sum in q = |lambda|^2.

CURSE_WRT = ("|lambda|", "nu_log", "theta_log")  # the eigenvalue's modulus, and the lru's exponential parametrisation of it


def memory_sums(q: float | np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P_m(n) = sum_{k<n} k^m q^k for m = 0, 1, 2 and n = 1 .. steps, each (steps, ...) (q may be an array, one per mode).
    Summed term by term: the polynomial closed forms (docs/curse_of_memory.md) cancel catastrophically near q = 1
    (their numerator is O((1 - q)^3)), a running sum of positive terms does not."""
    q = np.asarray(q, float)
    k = np.arange(steps, dtype=float).reshape(-1, *([1] * q.ndim))
    terms = np.power(q, k)  # q^k, underflowing harmlessly
    return np.cumsum(terms, 0), np.cumsum(k * terms, 0), np.cumsum(k * k * terms, 0)


def curse_closed_form(wrt: str, variant: str, radius, steps: int, phase=0.0, input_power=1.0) -> np.ndarray:
    """(steps,) E|dh_t/dtheta|^2 per unit (mean over the modes given), t = 0 .. steps-1, for theta the eigenvalue's
    modulus |lambda|, nu_log (|lambda| = exp(-exp(nu))) or theta_log (phase = exp(theta)), normalised (gamma =
    sqrt(1 - |lambda|^2), a function of lambda) or plain (gamma = 1); or wrt 'state': E|h_t|^2. radius, phase,
    input_power: scalars or one per mode."""
    r, phase, beta = (np.atleast_1d(np.asarray(v, float)) for v in (radius, phase, input_power))
    r, phase, beta = np.broadcast_arrays(r, phase, beta)
    q = r * r
    P0, P1, P2 = memory_sums(q, steps)
    normalised = variant == "normalised"
    g2 = 1 - q if normalised else np.ones_like(q)  # gamma^2
    if wrt == "state":
        per_mode = g2 * P0
    elif wrt in ("|lambda|", "nu_log"):
        # d h/d|lambda| = sum_k lambda^k (gamma k / r - gamma' r) x, gamma' = r / gamma when normalised, else 0
        per_mode = g2 * P2 / q - 2 * P1 + q / (1 - q) * P0 if normalised else P2 / q
        if wrt == "nu_log":  # d|lambda|/dnu = -exp(nu) |lambda| = |lambda| ln |lambda|
            per_mode = per_mode * q * np.log(r) ** 2
    elif wrt == "theta_log":  # d lambda/dtheta = i exp(theta) lambda: gamma^2 exp(2 theta) sum k^2 q^k
        per_mode = g2 * phase**2 * P2
    else:
        raise ValueError(f"no closed form for the sensitivity to {wrt!r}; there is one for: state, {', '.join(CURSE_WRT)}.")
    return (beta * per_mode).mean(-1)


def curse_stationary(wrt: str, variant: str, radius, phase=0.0, input_power=1.0) -> float:
    """The same at stationarity (t -> infinity), per unit, mean over modes: plain, d/d|lambda|: (1 + q) / (1 - q)^3;
    normalised: 1 / (1 - q)^2; nu_log: times q ln(|lambda|)^2 (normalised: bounded by 1/4 as |lambda| -> 1; plain:
    growing as 1 / (4 (1 - |lambda|))); theta_log: gamma^2 phase^2 q (1 + q) / (1 - q)^3; state: gamma^2 / (1 - q)."""
    r, phase, beta = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, float)) for v in (radius, phase, input_power)))
    q = r * r
    normalised = variant == "normalised"
    g2 = 1 - q if normalised else np.ones_like(q)
    if wrt == "state":
        per_mode = g2 / (1 - q)
    elif wrt in ("|lambda|", "nu_log"):
        per_mode = 1 / (1 - q) ** 2 if normalised else (1 + q) / (1 - q) ** 3
        if wrt == "nu_log":
            per_mode = per_mode * q * np.log(r) ** 2
    elif wrt == "theta_log":
        per_mode = g2 * phase**2 * q * (1 + q) / (1 - q) ** 3
    else:
        raise ValueError(f"no closed form for the sensitivity to {wrt!r}; there is one for: state, {', '.join(CURSE_WRT)}.")
    return float((beta * per_mode).mean())
