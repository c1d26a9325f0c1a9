"""VJP rules of linear algebra: MatMul (batched, broadcast, 1-D operands), Gemm, Einsum."""

from __future__ import annotations

from .builder import GraphBuilder, Product
from .registry import Node, rule


def _swap_last(g: GraphBuilder, x: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return g.op("Transpose", x, perm=perm)


def _to_operand(g: GraphBuilder, grad: str, operand: str, rank: int, other_rank: int) -> str:
    """A MatMul operand's gradient ``grad`` (rank ``rank``: the output's batch dims, then the operand's
    matrix dims) summed over the batch dims the operand was broadcast along: none when the other
    operand has no batch dims, all of them for a 1-D operand (a row or column)."""
    if g.rank(operand) == 1:
        summed = g.op("ReduceSum", grad, g.ints(list(range(rank - 2))), keepdims=0) if rank > 2 else grad
        return g.reshape_like(summed, operand)
    return grad if other_rank <= 2 else g.unbroadcast(grad, operand, rank=rank, matched=2)


@rule("MatMul")
def matmul(g: GraphBuilder, n: Node):
    """dA = dY·Bᵀ, dB = Aᵀ·dY, summed over broadcast batch dims; 1-D operands become matrices."""
    a, b = n.inputs
    ra, rb = g.rank(a), g.rank(b)
    rank = max(ra, rb, 2)
    a2 = g.unsqueeze(a, [0]) if ra == 1 else a
    b2 = g.unsqueeze(b, [-1]) if rb == 1 else b
    gy = n.gy
    if ra == 1:
        gy = g.unsqueeze(gy, [-2])
    if rb == 1:
        gy = g.unsqueeze(gy, [-1])
    da = db = None
    if n.active[0]:
        bt = _swap_last(g, b2, max(rb, 2))
        da = g.op("MatMul", gy, bt)
        if ra == rb == 2 and not n.active[1]:
            g.products[da] = Product(gy, bt)
        da = _to_operand(g, da, a, rank, rb)
    if n.active[1]:
        db = _to_operand(g, g.op("MatMul", _swap_last(g, a2, max(ra, 2)), gy), b, rank, ra)
    return [da, db]


@rule("Gemm")
def gemm(g: GraphBuilder, n: Node):
    """Y = alpha·A'·B' + beta·C with A' = Aᵀ if transA, B' = Bᵀ if transB: each gradient one Gemm,
    the transposes as its flags and alpha as its alpha (dA' = alpha·dY·B'ᵀ, dB' = alpha·A'ᵀ·dY)."""
    a, b = n.inputs[:2]
    alpha, beta = n.attr("alpha", 1.0), n.attr("beta", 1.0)
    ta, tb = n.attr("transA", 0), n.attr("transB", 0)
    da = (g.op("Gemm", b, n.gy, alpha=alpha, transA=tb, transB=1) if ta
          else g.op("Gemm", n.gy, b, alpha=alpha, transB=1 - tb)) if n.active[0] else None
    db = (g.op("Gemm", n.gy, a, alpha=alpha, transA=1, transB=ta) if tb
          else g.op("Gemm", a, n.gy, alpha=alpha, transA=1 - ta)) if n.active[1] else None
    grads = [da, db]
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
