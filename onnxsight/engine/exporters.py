"""Layer names that PyTorch's exporters leave in an ONNX file, as the user's ``nn.Module`` names.

- The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) names each node after its
  module scopes: ``/layer4/layer4.1/relu_1/Relu`` is the ``Relu`` of module ``layer4.1.relu_1``
  (the second call of ``layer4.1.relu``); a ``Sequential``'s child repeats its parent's name
  (``/features/features.1/block/block.0/...`` is ``features.1.block.0``).
- The dynamo exporter (``dynamo=True``) names nodes ``node_Conv_12`` but records, per node, the
  qualified module names in ``metadata_props["pkg.torch.onnx.name_scopes"]`` (``['', 'layer4',
  'layer4.1', 'layer4.1.relu', 'relu_1']``: the last entry is the FX node) and their classes in
  ``pkg.torch.onnx.class_hierarchy``. A module called twice shares one scope there; its calls are
  told apart by data flow and named as TorchScript does (``relu``, ``relu_1``).

Every data-path node output gets a name: the module's name when the module (call) is that one
node, else ``<module>.<node's own name>`` (``layer4.1.Add``, ``layer4.1.add_35``). Every module
also names its output, the last tensor computed inside it (``layer4.1``, ``layer4``), listed
after its content (innermost first), as ``model.layer4[-1]`` is addressed in pytorch-grad-cam.
A Conv or Gemm whose weight keeps its module's name (``layer1.0.conv1.weight``) is also named
after that module when no scope names it: the dynamo exporter fuses a batch norm into the
convolution and keeps only the norm's scope (``layer1.0.bn1``), and ``nn.MultiheadAttention``
runs its ``out_proj`` as a function.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

import onnx

NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm")
CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"


@dataclass
class _Scoped:
    """One node: the qualified names of the modules it runs in (outermost first), their classes
    (short names, "" when unknown), and its own name inside the innermost one."""

    index: int
    modules: list[str]
    classes: list[str]
    local: str
    scoped: bool = True  # False: the exporter recorded no scopes for this node


def torch_layer_names(model: onnx.ModelProto, dependent: set[str]) -> list[tuple[str, str, str]] | None:
    """``(name, tensor, kind)`` for every data-path tensor (``dependent``) and every module output
    of a PyTorch export, in graph order; None when the file is not one (other naming applies)."""
    graph = model.graph
    nodes = [(i, node) for i, node in enumerate(graph.node) if any(o in dependent for o in node.output)]
    if not nodes:
        return None
    if any(_prop(node, NAME_SCOPES) is not None for _, node in nodes):
        scoped = [_dynamo_scopes(i, node) for i, node in nodes]
        _adopt_unscoped(scoped, graph)
        _split_calls(scoped, graph)
    elif model.producer_name == "pytorch" and sum(node.name.startswith("/") for _, node in nodes) * 2 > len(nodes):
        scoped = [_torchscript_scopes(i, node) for i, node in nodes]
    else:
        return None
    return _names(scoped, graph, dependent)


def _prop(node: onnx.NodeProto, key: str) -> str | None:
    return next((p.value for p in node.metadata_props if p.key == key), None)


def _torchscript_scopes(index: int, node: onnx.NodeProto) -> _Scoped:
    if not node.name.startswith("/"):
        return _Scoped(index, [], [], node.name or node.output[0])
    *scopes, local = node.name[1:].split("/")
    modules, previous = [], ""
    for part in scopes:
        if previous and part.startswith(previous + "."):  # a Sequential's child: "block" -> "block.0"
            name = modules[-1] + part[len(previous):]
        else:
            name = f"{modules[-1]}.{part}" if modules else part
        modules.append(name)
        previous = part
    return _Scoped(index, modules, [""] * len(modules), local)


def _dynamo_scopes(index: int, node: onnx.NodeProto) -> _Scoped:
    scopes, classes = _literal(_prop(node, NAME_SCOPES)), _literal(_prop(node, CLASS_HIERARCHY))
    if len(scopes) < 2:
        return _Scoped(index, [], [], node.name or node.output[0], scoped=False)
    modules = [s for s in scopes[1:-1]]
    kinds = [c.rsplit(".", 1)[-1] for c in classes[1:-1]] if len(classes) == len(scopes) else [""] * len(modules)
    return _Scoped(index, modules, kinds, scopes[-1])


def _literal(text: str | None) -> list[str]:
    """A Python list literal written by the exporter; [] when absent or malformed."""
    try:
        value = ast.literal_eval(text) if text else []
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _adopt_unscoped(scoped: list[_Scoped], graph: onnx.GraphProto) -> None:
    """Nodes the exporter's optimizer made without scopes (a ``chunk``'s Split, half of a fused
    ``linear``) join the modules their scoped producers and consumers share."""
    made_by = {out: s for s in scoped for out in graph.node[s.index].output if out}
    read_by: dict[str, list[_Scoped]] = {}
    for s in scoped:
        for name in graph.node[s.index].input:
            read_by.setdefault(name, []).append(s)
    for s in scoped:
        if s.scoped:
            continue
        node = graph.node[s.index]
        near = [made_by[i] for i in node.input if i in made_by] + [r for o in node.output for r in read_by.get(o, [])]
        near = [n for n in near if n.modules and n.index != s.index]
        if not near:
            continue
        shared = os.path.commonprefix([n.modules for n in near])  # element-wise on lists
        s.modules, s.classes = list(shared), list(near[0].classes[:len(shared)])


def _split_calls(scoped: list[_Scoped], graph: onnx.GraphProto) -> None:
    """Renames the second and later calls of a leaf module (its nodes that data flow does not
    connect to the first call's) ``<name>_1``, ``<name>_2``..., as the TorchScript exporter names
    them (``relu``, ``relu_1`` for a ReLU module used twice in a residual block)."""
    made_by = {out: s.index for s in scoped for out in graph.node[s.index].output if out}
    parents = {m for s in scoped for m in s.modules[:-1]}
    groups: dict[str, list[_Scoped]] = {}
    for s in scoped:
        if s.modules and s.modules[-1] not in parents:
            groups.setdefault(s.modules[-1], []).append(s)
    for name, members in groups.items():
        for k, call in enumerate(_components(members, graph, made_by)[1:], 1):
            for s in call:
                s.modules[-1] = f"{name}_{k}"


def _components(members: list[_Scoped], graph: onnx.GraphProto, made_by: dict[str, int]) -> list[list[_Scoped]]:
    """``members`` grouped into data-connected components, in order of their first node."""
    parent = {s.index: s.index for s in members}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for s in members:
        for name in graph.node[s.index].input:
            j = made_by.get(name)
            if j is not None and j in parent:
                parent[root(j)] = root(s.index)
    components: dict[int, list[_Scoped]] = {}
    for s in members:
        components.setdefault(root(s.index), []).append(s)
    return sorted(components.values(), key=lambda c: c[0].index)


def _names(scoped: list[_Scoped], graph: onnx.GraphProto, dependent: set[str]) -> list[tuple[str, str, str]]:
    members: dict[str, set] = {}  # module -> the exporter's nodes in it (one FX node may be several ONNX nodes)
    last: dict[str, _Scoped] = {}
    kinds: dict[str, str] = {}
    for s in scoped:
        for module, kind in zip(s.modules, s.classes):
            members.setdefault(module, set()).add((tuple(s.modules), s.local))
            last[module] = s
            kinds.setdefault(module, kind)
    # one FX node may become several ONNX nodes (linear: MatMul, Add): its name goes to the last
    final = {(tuple(s.modules), s.local): s.index for s in scoped}
    closing: dict[int, list[str]] = {}
    for module, s in last.items():
        closing.setdefault(s.index, []).append(module)
    named, seen = [], set()

    def add(name: str, tensor: str, kind: str) -> None:
        if name not in seen:
            seen.add(name)
            named.append((name, tensor, kind))

    weights = {t.name for t in graph.initializer}
    for s in scoped:
        node = graph.node[s.index]
        outputs = [o for o in node.output if o in dependent]
        weight = node.input[1] if node.op_type in _WEIGHTED and len(node.input) > 1 else ""
        if weight in weights and weight.endswith(".weight") and weight[:-7] not in members and len(outputs) == 1:
            add(weight[:-7], outputs[0], "")  # a module the exporter fused away (conv1 into bn1's scope)
        inner = s.modules[-1] if s.modules else ""
        own = inner if inner and len(members[inner]) == 1 else (f"{inner}.{s.local}" if inner else s.local)
        if final[(tuple(s.modules), s.local)] != s.index:
            own = f"{own}.{node.op_type}"
        kind = kinds.get(own, "")
        if len(node.output) == 1:
            add(own if own not in seen else outputs[0], outputs[0], kind)
        else:
            for k, out in enumerate(node.output):
                if out in dependent:
                    add(f"{own}:{k}" if f"{own}:{k}" not in seen else out, out, kind)
        for module in sorted(closing.get(s.index, []), key=len, reverse=True):
            if outputs:
                add(module, outputs[0], kinds.get(module, ""))
    return named
