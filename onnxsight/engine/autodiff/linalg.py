"""VJP rules of linear algebra: MatMul (batched, broadcast, 1-D operands), Gemm, Einsum."""

from __future__ import annotations

from .builder import GraphBuilder, Product
from .registry import Node, rule


def _swap_last(g: GraphBuilder, x: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return g.op("Transpose", x, perm=perm)


@rule("MatMul")
def matmul(g: GraphBuilder, n: Node):
    """dA = dY·Bᵀ, dB = Aᵀ·dY, summed over broadcast batch dims; 1-D operands become matrices."""
    a, b = n.inputs
    ra, rb = g.rank(a), g.rank(b)
    a2 = g.unsqueeze(a, [0]) if ra == 1 else a
    b2 = g.unsqueeze(b, [-1]) if rb == 1 else b
    gy = n.gy
    if ra == 1:
        gy = g.unsqueeze(gy, [-2])
    if rb == 1:
        gy = g.unsqueeze(gy, [-1])
    bt = _swap_last(g, b2, max(rb, 2))
    da = g.op("MatMul", gy, bt)
    db = g.op("MatMul", _swap_last(g, a2, max(ra, 2)), gy)
    if ra == rb == 2:  # no batch dims: nothing was broadcast
        if not n.active[1]:
            g.products[da] = Product(gy, bt)
        return [da, db]
    rank = max(ra, rb, 2)  # dA and dB have the batch dims of both operands
    return [g.reshape_like(g.unbroadcast(da, a2, rank=rank, matched=2), a),
            g.reshape_like(g.unbroadcast(db, b2, rank=rank, matched=2), b)]


@rule("Gemm")
def gemm(g: GraphBuilder, n: Node):
    """Y = alpha·A'·B' + beta·C with A' = Aᵀ if transA, B' = Bᵀ if transB."""
    a, b = n.inputs[:2]
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    a_op = g.op("Transpose", a) if n.attr("transA", 0) else a
    b_op = g.op("Transpose", b) if n.attr("transB", 0) else b
    gy = g.op("Mul", n.gy, g.const(alpha, like=n.gy)) if alpha != 1.0 else n.gy
    da = g.op("MatMul", gy, g.op("Transpose", b_op))  # gradient of A'
    db = g.op("MatMul", g.op("Transpose", a_op), gy)  # gradient of B'
    grads = [g.op("Transpose", da) if n.attr("transA", 0) else da,
             g.op("Transpose", db) if n.attr("transB", 0) else db]
    if n.input(2) is not None:
        gc = g.op("Mul", n.gy, g.const(beta, like=n.gy)) if beta != 1.0 else n.gy
        grads.append(g.unbroadcast(gc, n.inputs[2], n.y))
    return grads


def _parse_einsum(equation: str, n_inputs: int) -> tuple[list[str], str]:
    equation = equation.replace(" ", "")
    lhs, _, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise ValueError("term count")
    if "->" not in equation:  # implicit output: letters seen once, sorted, after the ellipsis
        letters = [c for c in lhs if c.isalpha()]
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs


@rule("Einsum")
def einsum(g: GraphBuilder, n: Node):
    """dX_i = einsum(dY, other operands -> term_i) when term_i has no repeated letter and no
    letter that only it carries (a sum over such a letter would need a broadcast back)."""
    try:
        terms, out = _parse_einsum(n.attr("equation").decode() if isinstance(n.attr("equation"), bytes)
                                   else n.attr("equation"), len(n.inputs))
    except ValueError:
        raise n.unsupported("this equation") from None
    grads = []
    for i, term in enumerate(terms):
        if not n.active[i]:
            grads.append(None)
            continue
        others = [t for j, t in enumerate(terms) if j != i]
        letters = [c for c in term.replace("...", "") if c]
        seen_elsewhere = set(out + "".join(others))
        if len(set(letters)) != len(letters) or any(c not in seen_elsewhere for c in letters):
            raise n.unsupported(f"operand {i} with term {term!r} (repeated or operand-only index)")
        if "..." in term and "..." not in out:
            raise n.unsupported("an ellipsis summed away")
        equation = ",".join([out, *others]) + "->" + term
        operands = [n.gy, *(x for j, x in enumerate(n.inputs) if j != i)]
        grad = g.op("Einsum", *operands, equation=equation)
        grads.append(g.unbroadcast(grad, n.inputs[i]) if "..." in term else grad)
    return grads
