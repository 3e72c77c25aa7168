"""Orthogonal rotations for QuaRot: Hadamard matrices of many sizes, random ones, and applying them to tensors.

A normalized Hadamard matrix H (entries ±1/sqrt(n), H H^T = I) spreads every coordinate of a vector over all
others, which is what makes rotated activations easy to quantize. We build H of size n = m * 2^k as the
Kronecker product of a small base matrix of size m and Sylvester's 2^k matrix; the Sylvester factor is applied
with the fast Walsh-Hadamard transform (n log n), the base factor as a small matmul, so no n x n matrix is ever
held. Base matrices come from Paley's constructions (I: m = q + 1 for a prime power q = 3 mod 4; II:
m = 2(q + 1) for q = 1 mod 4), which cover llmc's stored sizes 12, 20, 28, 36, 52, 60, 108 and 140 (not 156 and
172, which llmc stores from Williamson's construction: a size that needs them is refused by name).

`Rotation.right(x)` computes x @ M over the last dimension for the rotation M; a randomized Hadamard rotation
is M = D H with D a random ±1 diagonal (QuaRot's and llmc's `random_hadamard_matrix`), a random orthogonal one
is the Q of a Gaussian matrix's QR decomposition with the signs of R's diagonal (llmc's `rotate_mode: random`).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch


def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, k) with q = p^k for a prime p, or None."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)
    k, r = 0, q
    while r % p == 0:
        r //= p
        k += 1
    return (p, k) if r == 1 else None


def _field_elements(p: int, k: int) -> tuple[list[tuple[int, ...]], dict[tuple[int, ...], tuple[int, ...]]]:
    """The elements of GF(p^k) as coefficient tuples and the square of each (polynomials modulo an irreducible)."""
    elems = list(itertools.product(range(p), repeat=k))
    if k == 1:
        return elems, {e: ((e[0] * e[0]) % p,) for e in elems}

    def mul(a: tuple[int, ...], b: tuple[int, ...], mod: tuple[int, ...]) -> tuple[int, ...]:
        prod = [0] * (2 * k - 1)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                prod[i + j] = (prod[i + j] + x * y) % p
        for d in range(2 * k - 2, k - 1, -1):  # reduce by the monic x^k + sum mod[i] x^i
            c = prod[d]
            if c:
                prod[d] = 0
                for i in range(k):
                    prod[d - k + i] = (prod[d - k + i] - c * mod[i]) % p
        return tuple(prod[:k])

    zero = (0,) * k
    for mod in itertools.product(range(p), repeat=k):  # an irreducible: no nonzero zero divisors
        squares = {e: mul(e, e, mod) for e in elems}
        if all(mul(a, b, mod) != zero for a in elems[1:] for b in elems[1:]):
            return elems, squares
    raise AssertionError(f"no irreducible polynomial of degree {k} over GF({p})")


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(e_j - e_i), chi the quadratic character of GF(q)."""
    p, k = _prime_power(q)  # type: ignore[misc]
    elems, squares = _field_elements(p, k)
    nonzero_squares = {s for e, s in squares.items() if any(e)}
    Q = torch.zeros(q, q, dtype=torch.float64)
    for i, a in enumerate(elems):
        for j, b in enumerate(elems):
            d = tuple((y - x) % p for x, y in zip(a, b))
            if any(d):
                Q[i, j] = 1.0 if d in nonzero_squares else -1.0
    return Q


@functools.lru_cache(maxsize=None)
def paley_matrix(m: int) -> torch.Tensor | None:
    """A ±1 Hadamard matrix of size m from Paley's constructions (float64), or None if neither applies."""
    if m in (1, 2):
        return torch.tensor([[1.0]], dtype=torch.float64) if m == 1 else torch.tensor([[1.0, 1.0], [1.0, -1.0]],
                                                                                       dtype=torch.float64)
    q = m - 1
    if _prime_power(q) and q % 4 == 3:  # Paley I: H = I + S, S = [[0, 1^T], [-1, Q]] skew
        S = torch.zeros(m, m, dtype=torch.float64)
        S[0, 1:], S[1:, 0], S[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
        return torch.eye(m, dtype=torch.float64) + S
    q = m // 2 - 1
    if m % 2 == 0 and _prime_power(q) and q % 4 == 1:  # Paley II from the symmetric conference matrix C
        C = torch.zeros(m // 2, m // 2, dtype=torch.float64)
        C[0, 1:], C[1:, 0], C[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
        a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(C, a) + torch.kron(torch.eye(m // 2, dtype=torch.float64), b)
    return None


@functools.lru_cache(maxsize=None)
def hadamard_factors(n: int) -> tuple[int, int] | None:
    """(m, 2^k) with n = m * 2^k and a Paley (or trivial) base matrix of size m; None if we build no H of size n."""
    if n < 1:
        return None
    p2 = n & -n
    j = p2
    while j >= 1:  # prefer the largest Sylvester factor: the fast transform does the most work
        m = n // j
        if paley_matrix(m) is not None:
            return m, j
        j //= 2
    return None


def fwht(x: torch.Tensor) -> torch.Tensor:
    """x @ H over the last dimension for Sylvester's normalized H of size 2^k (symmetric), in x's dtype."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    y = x
    while h < n:
        y = y.reshape(*lead, n // (2 * h), 2, h)
        y = torch.stack((y[..., 0, :] + y[..., 1, :], y[..., 0, :] - y[..., 1, :]), dim=-2)
        h *= 2
    return y.reshape(x.shape) / math.sqrt(n)


def hadamard_right(x: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """x @ H over the last dimension for our normalized Hadamard H of size n (= x.shape[-1])."""
    n = n or x.shape[-1]
    factors = hadamard_factors(n)
    if factors is None:
        raise ValueError(f"no Hadamard matrix of size {n} is built here")
    m, p2 = factors
    y = fwht(x.reshape(*x.shape[:-1], m, p2))
    if m > 1:  # (x (A kron B))[k, l] = sum_ij x[i, j] A[i, k] B[j, l]
        A = paley_matrix(m).to(device=x.device, dtype=x.dtype) / math.sqrt(m)
        y = torch.einsum("...ij,ik->...kj", y, A)
    return y.reshape(x.shape)


def hadamard_matrix(n: int) -> torch.Tensor:
    """The dense normalized Hadamard matrix of size n (float64); for tests and small sizes."""
    return hadamard_right(torch.eye(n, dtype=torch.float64))


@dataclass
class Rotation:
    """An orthogonal n x n rotation M, applied as x @ M: randomized Hadamard (signs) or dense (random orthogonal)."""

    n: int
    signs: torch.Tensor | None = None  # M = diag(signs) H
    dense: torch.Tensor | None = None  # M itself

    def right(self, x: torch.Tensor) -> torch.Tensor:
        """x @ M over the last dimension (computed in float64 for weights, in x's dtype otherwise)."""
        if self.dense is not None:
            return x @ self.dense.to(device=x.device, dtype=x.dtype)
        s = self.signs.to(device=x.device, dtype=x.dtype) if self.signs is not None else 1
        return hadamard_right(x * s, self.n)


def random_hadamard(n: int, gen: torch.Generator) -> Rotation:
    """QuaRot's randomized Hadamard rotation D H (D a random ±1 diagonal)."""
    signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64).to(torch.float64) * 2 - 1
    return Rotation(n, signs=signs)


def random_orthogonal(n: int, gen: torch.Generator) -> Rotation:
    """A Haar-random orthogonal rotation (QR of a Gaussian matrix, columns signed by diag(R))."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return Rotation(n, dense=q * torch.sign(torch.diagonal(r)).unsqueeze(0))
