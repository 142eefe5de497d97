"""integrated_gradients' Gauss-Legendre nodes in O(steps) time and memory (issue 30, item 7): numpy's
leggauss up to 100 points (captum's own nodes), Bogaert's iteration-free formulas beyond, checked against
leggauss, against the rule's exactness on polynomials, and against high-precision roots (mpmath)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from gradattr.methods.quadrature import gauss_legendre, quadrature


@pytest.mark.parametrize("n", [101, 128, 255, 400])
def test_nodes_and_weights_match_leggauss(n):
    a, w = quadrature("gausslegendre", n)
    x, v = np.polynomial.legendre.leggauss(n)
    np.testing.assert_allclose(a, 0.5 * (1 + x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(w, 0.5 * v, rtol=0, atol=1e-12)


def test_up_to_100_points_the_nodes_are_leggauss_exactly():
    for n in (1, 2, 50, 100):
        x, v = np.polynomial.legendre.leggauss(n)
        a, w = quadrature("gausslegendre", n)
        assert a == (0.5 * (1 + x)).tolist() and w == (0.5 * v).tolist()


@pytest.mark.parametrize("n", [4001, 20000])
def test_many_points_integrate_polynomials_exactly(n):
    a, w = (np.asarray(t) for t in quadrature("gausslegendre", n))
    assert len(a) == n and np.all(np.diff(a) > 0) and 0 < a[0] and a[-1] < 1
    np.testing.assert_allclose(a + a[::-1], 1.0, rtol=0, atol=1e-15)  # symmetric about 1/2
    for k in range(0, 40, 3):  # int_0^1 a^k da = 1 / (k + 1)
        assert float(np.sum(w * a ** k)) == pytest.approx(1 / (k + 1), rel=1e-13)


def test_edge_weights_against_high_precision_roots():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    n = 300
    x, w = gauss_legendre(n)
    for i in (0, 1, 7, n // 2):
        r = mpmath.findroot(lambda t: mpmath.legendre(n, t), mpmath.mpf(x[i]))
        dp = mpmath.diff(lambda t: mpmath.legendre(n, t), r)
        assert abs(x[i] - float(r)) < 1e-15
        assert w[i] == pytest.approx(float(2 / ((1 - r ** 2) * dp ** 2)), rel=1e-14)


def test_node_memory_grows_with_steps_not_their_square():
    tracemalloc.start()
    try:
        quadrature("gausslegendre", 2000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2 ** 20, f"{peak / 2 ** 20:.1f} MiB"  # leggauss: a 2000 x 2000 matrix (30 MiB) and more
