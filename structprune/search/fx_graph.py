"""The network as a torch.fx graph, split where a candidate mask starts to act: a fixed head and a tail.

`trace` runs torch.fx.symbolic_trace on the model and rewrites its in-place operations (ReLU(inplace=True),
`out += x`, `relu_`) into their out-of-place forms, so that a value computed once can be read again
unchanged; a graph where an in-place operation changes a value that a later node still reads cannot be
rewritten that way, and is refused. The rewritten graph shares the model's modules and parameters.

`split_graph(traced, touched)`: the *changed* nodes are the ones calling a module of `touched` (the modules
whose parameters a candidate changes: a conv, or every member of a channel group) or reading one of their
parameters. Everything downstream of them (and needed by the output) is the *tail*; the values the tail
reads from outside it are the *frontier*. The head computes the frontier from the image, once; the tail
computes the logits from the frontier, once per candidate. Both are generated GraphModules. In the tail, the
rewritten operations that change a value the tail itself made (a conv's or norm's output, not a kept frontier
value or a parameter) run in place again, as in the model: no new tensor per candidate for each activation.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from structprune.errors import StructpruneError

OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                operator.itruediv: operator.truediv, operator.ifloordiv: operator.floordiv,
                operator.iand: operator.and_, operator.ior: operator.or_, operator.ipow: operator.pow}
NORMS = nn.modules.batchnorm._BatchNorm


def _function_in_place(target) -> tuple[bool, object]:
    """(whether the function changes its first argument, its out-of-place form or None)."""
    if target in OUT_OF_PLACE:
        return True, OUT_OF_PLACE[target]
    if target is operator.setitem:
        return True, None
    name = getattr(target, "__name__", "")
    if name.endswith("_") and not name.endswith("__"):
        for space in (torch, F):
            if getattr(space, name, None) is target:
                return True, getattr(space, name[:-1], None)
    return False, None


def _functionalize(gm: fx.GraphModule) -> None:
    """Rewrite in-place nodes of `gm` into out-of-place ones (in place of the graph), refusing the graphs
    where that changes what a node reads."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    gm._originals = {}  # out-of-place copy's name -> the model path of its module
    for node in list(gm.graph.nodes):
        in_place, replacement = False, None
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if getattr(module, "inplace", False) is True:
                in_place = True
                replacement = copy.copy(module)
                replacement.inplace = False
        elif node.op == "call_function":
            in_place, replacement = _function_in_place(node.target)
            if node.kwargs.get("inplace") is True:
                in_place, replacement = True, node.target
        elif node.op == "call_method" and node.target.endswith("_") and not node.target.endswith("__"):
            in_place = True
            replacement = node.target[:-1] if callable(getattr(torch.Tensor, node.target[:-1], None)) else None
        if not in_place:
            continue
        node.meta["in_place"] = (node.target, dict(node.kwargs))  # its in-place form, for `_in_place_again`
        changed = node.args[0] if node.args else None
        if replacement is None:
            raise StructpruneError(f"the traced graph changes a tensor in place at {node.name} ({node.target})")
        if isinstance(changed, fx.Node):
            later = [u for u in changed.users if u is not node and order[u] > order[node]]
            if later:
                raise StructpruneError(f"an in-place operation at {node.name} changes {changed.name}, which "
                                       f"{later[0].name} reads afterwards")
        if node.op == "call_module":
            name = "_out_of_place_" + node.target.replace(".", "_")
            gm.add_submodule(name, replacement)
            gm._originals[name] = node.target
            node.target = name
        else:
            node.target = replacement
            if node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
    gm.recompile()


def trace(model: nn.Module) -> fx.GraphModule:
    """The model's graph with in-place operations made out-of-place; StructpruneError saying why it cannot be."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # tracing runs the user's forward on proxies: any error means "not traceable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StructpruneError(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {first[:160]})") from None
    if sum(node.op == "placeholder" for node in gm.graph.nodes) != 1:
        raise StructpruneError(f"the traced {type(model).__name__} takes more than one input")
    _functionalize(gm)
    return gm


def _inside(name: str, module: str) -> bool:
    """Whether module path `name` is `module` or lies inside it."""
    return module == "" or name == module or name.startswith(module + ".")


@dataclass
class GraphSplit:
    """A traced network split for a set of changed modules."""

    head: fx.GraphModule  # image -> tuple of the frontier values
    tail: fx.GraphModule  # frontier values (positional) -> logits
    frontier: list[str]  # the frontier nodes' names, in the order head returns them and tail takes them
    tail_modules: set[str]  # paths of the modules (and their submodules) the tail runs or reads parameters of
    head_modules: set[str]
    tail_nodes: int
    nodes: int

    def tail_norms(self, model: nn.Module) -> list[nn.Module]:
        return [m for n, m in model.named_modules() if n in self.tail_modules and isinstance(m, NORMS)]

    def shared_norm(self, model: nn.Module) -> str | None:
        """A batch norm that both the head and the tail run (its statistics would depend on both)."""
        for name, module in model.named_modules():
            if isinstance(module, NORMS) and name in self.tail_modules and name in self.head_modules:
                return name
        return None


def _modules_read(gm: fx.GraphModule, nodes: list[fx.Node], model: nn.Module) -> set[str]:
    """Model paths of the modules `nodes` call (with their submodules) or read an attribute of."""
    out: set[str] = set()
    paths = [name for name, _ in model.named_modules()]
    for node in nodes:
        if node.op == "call_module":
            target = _original_of(gm, node.target)
            out |= {p for p in paths if _inside(p, target)}
        elif node.op == "get_attr":
            out.add(node.target.rsplit(".", 1)[0] if "." in node.target else "")
    return out


def _original_of(gm: fx.GraphModule, target: str) -> str:
    """The model path of a call_module target (an out-of-place copy stands for its original)."""
    return getattr(gm, "_originals", {}).get(target, target)


def _subgraph(gm: fx.GraphModule, inputs: list[fx.Node], nodes: list[fx.Node], result,
              in_place: bool = False) -> fx.GraphModule:
    """A GraphModule taking `inputs` as placeholders, running `nodes` (in order), returning `result` mapped;
    `in_place`: with the in-place operations on its own values restored (`_in_place_again`)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in inputs:
        env[node] = graph.placeholder(node.name)
    for node in nodes:
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(fx.graph.map_arg(result, lambda n: env[n]))
    if in_place:
        _in_place_again(gm, graph)
    return fx.GraphModule(gm, graph)


FRESH_MODULES = (nn.modules.conv._ConvNd, nn.Linear, NORMS)  # modules whose output is a new tensor


def _in_place_again(gm: fx.GraphModule, graph: fx.Graph) -> None:
    """Give back their in-place form to the rewritten nodes of `graph` (a tail) that change a value the tail
    itself made (a new tensor: a conv's, linear's or norm's output, an out-of-place rewrite's), as the model
    runs them: no kept value or parameter is changed, and no copy is made per candidate."""
    fresh: set[fx.Node] = set()
    for node in graph.nodes:
        original = node.meta.get("in_place")
        if original is not None and node.args and node.args[0] in fresh:
            node.target, node.kwargs = original
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            if not isinstance(module, FRESH_MODULES) and not node.target.startswith("_out_of_place_"):
                continue
        elif not ((node.op in ("call_function", "call_method") and original is not None)
                  or (node.op == "call_function" and node.target in OUT_OF_PLACE.values())):
            continue
        fresh.add(node)


def _ancestors(nodes: list[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.all_input_nodes)
    return seen


def split_graph(gm: fx.GraphModule, model: nn.Module, touched: set[str]) -> GraphSplit:
    """Split the traced `model` (see `trace`) where the modules `touched` first act; StructpruneError when the
    graph does not allow it (a changed module the graph never runs, an output that is not one tensor)."""
    nodes = list(gm.graph.nodes)
    output = next(n for n in nodes if n.op == "output")
    result = output.args[0]
    if not isinstance(result, fx.Node):
        raise StructpruneError(f"the traced {type(model).__name__} returns more than one value")

    def changes(node: fx.Node) -> bool:
        if node.op == "call_module":
            target = _original_of(gm, node.target)
            return any(_inside(t, target) or _inside(target, t) for t in touched)
        if node.op == "get_attr":
            return any(_inside(node.target, t) for t in touched)
        return False

    downstream: set[fx.Node] = set()
    for node in nodes:
        if changes(node) or any(a in downstream for a in node.all_input_nodes):
            downstream.add(node)
    if not downstream:
        raise StructpruneError(f"the traced graph never runs {', '.join(sorted(touched))}")
    if result not in downstream:
        raise StructpruneError(f"the output does not depend on {', '.join(sorted(touched))}")
    live = _ancestors([result])
    tail = [n for n in nodes if n in downstream and n in live]
    reads = [a for n in tail for a in n.all_input_nodes if a not in downstream]
    attrs = list(dict.fromkeys(a for a in reads if a.op == "get_attr"))  # parameters: read live by the tail
    frontier = list(dict.fromkeys(a for a in reads if a.op != "get_attr"))
    fixed = _ancestors(frontier)
    head = [n for n in nodes if n in fixed and n.op != "placeholder"]
    placeholder = next(n for n in nodes if n.op == "placeholder")
    return GraphSplit(head=_subgraph(gm, [placeholder], head, tuple(frontier)),
                      tail=_subgraph(gm, frontier, attrs + tail, result, in_place=True), frontier=[n.name for n in frontier],
                      tail_modules=_modules_read(gm, attrs + tail, model), head_modules=_modules_read(gm, head, model),
                      tail_nodes=len(tail), nodes=len(nodes))
