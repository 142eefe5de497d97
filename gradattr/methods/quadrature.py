"""Integration rules on [0, 1] for integrated gradients: captum's ``approximation_methods``.

:func:`quadrature` gives the points and weights of each rule (``QUADRATURES``), with
Gauss-Legendre nodes from :func:`gauss_legendre` (numpy's ``leggauss`` up to
:data:`LEGGAUSS_UP_TO` points, Bogaert's iteration-free formulas beyond). The integral
itself is taken in :mod:`.input_attribution`.
"""
from __future__ import annotations

import numpy as np
import torch

QUADRATURES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def quadrature(rule: str, steps: int) -> tuple[list[float], list[float]]:
    """``(alphas, weights)`` of an integration rule on [0, 1]: captum's ``approximation_methods``.

    Gauss-Legendre nodes and weights rescaled from [-1, 1]; the Riemann rules with
    step ``1/steps`` (the trapezoid halves the two end weights), their points from
    ``torch.linspace`` in float32 as captum takes them.

    >>> quadrature("riemann_trapezoid", 3)
    ([0.0, 0.5, 1.0], [0.16666666666666666, 0.3333333333333333, 0.16666666666666666])
    """
    if rule == "gausslegendre":
        nodes, w = gauss_legendre(steps)
        return (0.5 * (1 + nodes)).tolist(), (0.5 * w).tolist()
    n = steps
    weights = [1 / n] * n
    if rule == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        return torch.linspace(0, 1, n).tolist(), weights
    if rule == "riemann_left":
        return torch.linspace(0, 1 - 1 / n, n).tolist(), weights
    if rule == "riemann_middle":
        return torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n).tolist(), weights
    return torch.linspace(1 / n, 1, n).tolist(), weights


#: Up to this many points the nodes are numpy's ``leggauss`` (captum's own; its cost grows with the cube of
#: the count), beyond it Bogaert's iteration-free formulas (O(steps) time and memory).
LEGGAUSS_UP_TO = 100

# Bogaert (2014), "Iteration-free computation of Gauss-Legendre quadrature nodes and weights", SIAM J. Sci.
# Comput. 36(3): A1008-A1026: McMahon's series of the k-th zero of J0, the series of J1(j_k)^2 in 1/(k - 1/4),
# and the paper's polynomial fits in theta^2 of the node's and the weight's corrections (highest power first).
_J0_ZERO_SERIES = (0.125, -0.807291666666666666666666666667e-1, 0.246028645833333333333333333333,
                   -1.82443876720610119047619047619, 25.3364147973439050099206349206,
                   -567.644412135183381139802038240, 18690.4765282320653831636345064,
                   -8.49353580299148769921876983660e5, 5.09225462402226769498681286758e7)
_J1_SQUARED_SERIES = (0.202642367284675542887758926420, 0.0, -0.303380429711290253026202643516e-3,
                      0.198924364245969295201137972743e-3, -0.228969902772111653038747229723e-3,
                      0.433710719130746277915572905025e-3, -0.123632349727175414724737657367e-2,
                      0.496101423268883102872271417616e-2, -0.266837393702323757700998557826e-1,
                      .185395398206345628711318848386)
_NODE_FITS = (
    (-1.29052996274280508473467968379e-12, 2.40724685864330121825976175184e-10,
     -3.13148654635992041468855740012e-8, 0.275573168962061235623801563453e-5,
     -0.148809523713909147898955880165e-3, 0.416666666665193394525296923981e-2,
     -0.416666666666662959639712457549e-1),
    (2.20639421781871003734786884322e-9, -7.53036771373769326811030753538e-8,
     0.161969259453836261731700382098e-5, -0.253300326008232025914059965302e-4,
     0.282116886057560434805998583817e-3, -0.209022248387852902722635654229e-2,
     0.815972221772932265640401128517e-2),
    (-2.97058225375526229899781956673e-8, 5.55845330223796209655886325712e-7,
     -0.567797841356833081642185432056e-5, 0.418498100329504574443885193835e-4,
     -0.251395293283965914823026348764e-3, 0.128654198542845137196151147483e-2,
     -0.416012165620204364833694266818e-2))
_WEIGHT_FITS = (
    (-2.20902861044616638398573427475e-14, 2.30365726860377376873232578871e-12,
     -1.75257700735423807659851042318e-10, 1.03756066927916795821098009353e-8,
     -4.63968647553221331251529631098e-7, 0.149644593625028648361395938176e-4,
     -0.326278659594412170300449074873e-3, 0.436507936507598105249726413120e-2,
     -0.305555555555553028279487898503e-1, 0.833333333333333302184063103900e-1),
    (3.63117412152654783455929483029e-12, 7.67643545069893130779501844323e-11,
     -7.12912857233642220650643150625e-9, 2.11483880685947151466370130277e-7,
     -0.381817918680045468483009307090e-5, 0.465969530694968391417927388162e-4,
     -0.407297185611335764191683161117e-3, 0.268959435694729660779984493795e-2,
     -0.111111111111214923138249347172e-1),
    (2.01826791256703301806643264922e-9, -4.38647122520206649251063212545e-8,
     5.08898347288671653137451093208e-7, -0.397933316519135275712977531366e-5,
     0.200559326396458326778521795392e-4, -0.422888059282921161626339411388e-4,
     -0.105646050254076140548678457002e-3, -0.947969308958577323145923317955e-4,
     0.656966489926484797412985260842e-2))


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (ascending) and weights of the ``n``-point Gauss-Legendre rule on [-1, 1].

    Up to :data:`LEGGAUSS_UP_TO` points: ``numpy.polynomial.legendre.leggauss`` (what captum
    uses). Beyond: Bogaert's iteration-free asymptotic formulas, node by node from the zeros of
    the Bessel function ``J0``, in O(n) time and memory and within a few ulps (``leggauss``
    builds an ``n x n`` companion matrix: O(n^2) memory and O(n^3) time, minutes at 10,000).

    >>> x, w = gauss_legendre(2000)  # exact for polynomials of degree < 4000: int x^10 dx = 2/11
    >>> round(float(np.sum(w)), 12), round(float(np.sum(w * x ** 10)) * 11 / 2, 12)
    (2.0, 1.0)
    """
    if n <= LEGGAUSS_UP_TO:
        return np.polynomial.legendre.leggauss(n)
    from scipy import special

    k = np.arange(1, (n + 1) // 2 + 1, dtype=np.float64)  # the nodes of x >= 0, from the largest
    beta = np.pi * (k - 0.25)
    r2 = (1 / beta) ** 2
    nu = beta + np.polyval(_J0_ZERO_SERIES[::-1], r2) / beta  # McMahon, for k > 20
    small = special.jn_zeros(0, min(21, len(k)))
    nu[:min(20, len(k))] = small[:20]
    t = 1 / (k - 0.25)
    bj1 = t * np.polyval(_J1_SQUARED_SERIES[::-1], t * t)  # J1(nu)^2, for k > 21
    bj1[:len(small)] = special.j1(small) ** 2
    w = 1 / (n + 0.5)
    theta = w * nu
    x = theta * theta
    sf = [np.polyval(c, x) for c in _NODE_FITS]
    wsf = [np.polyval(c, x) for c in _WEIGHT_FITS]
    nu_sin = nu / np.sin(theta)
    winv = w * w * nu_sin
    w2 = winv * winv
    theta = w * (nu + theta * winv * (sf[0] + w2 * (sf[1] + w2 * sf[2])))
    weight = 2 * w / (bj1 * nu_sin * (1 + w2 * (wsf[0] + w2 * (wsf[1] + w2 * wsf[2]))))
    node = np.cos(theta)
    if n % 2:
        node[-1] = 0.0
    half = n // 2
    nodes = np.concatenate([-node[:half], node[half:][::-1], node[:half][::-1]])
    weights = np.concatenate([weight[:half], weight[half:][::-1], weight[:half][::-1]])
    return nodes, weights
