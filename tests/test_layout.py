"""The README's layout: imports point one way, from the layers to the tools (as its layout block groups
the modules), and the networks, the steps and the optimiser run without TensorFlow."""

import ast
import os
import re

from tests.helpers import ROOT

PACKAGE = os.path.join(ROOT, "alexnet_jax")


def readme_layout() -> dict[str, set[str]]:
    """The README's layout block, `{"the data": {"statistics", ...}, "tools": {"predict", ...}}`: the
    modules each of its lines lists, by the words at the end of the line."""
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    groups = {}
    for line in block.splitlines():
        modules = re.findall(r"(\w+)\.py", line)
        what = re.sub(r".*\.py\)?\s+", "", line).strip() if modules else ""
        if what:
            groups.setdefault(what, set()).update(modules)
    return groups


def imports(outside: bool = False) -> dict[str, set[str]]:
    """`{"networks.alexnet": {"networks.layers"}, "train": {"checkpoint", ...}}`: the package's modules
    that each module of the package imports (at any depth of its code); with `outside`, the top-level
    packages from elsewhere that it imports (`{"jax", "numpy", ...}`)."""
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            module = os.path.relpath(path, PACKAGE)[: -len(".py")].replace(os.sep, ".").removesuffix(".__init__")
            names = set()
            for node in ast.walk(ast.parse(open(path).read())):
                if outside:
                    if isinstance(node, ast.Import):
                        names |= {alias.name.split(".")[0] for alias in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        names.add(node.module.split(".")[0])
                    continue
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alexnet_jax"):
                    inside = node.module.removeprefix("alexnet_jax").lstrip(".")
                    for alias in node.names:  # `from alexnet_jax import x` or `from alexnet_jax.x import name`
                        candidate = f"{inside}.{alias.name}".lstrip(".")
                        exists = os.path.exists(os.path.join(PACKAGE, *candidate.split("."))) or os.path.exists(
                            os.path.join(PACKAGE, *candidate.split(".")) + ".py"
                        )
                        names.add(candidate if exists else inside)
                elif isinstance(node, ast.Import):
                    names |= {
                        a.name.removeprefix("alexnet_jax.") for a in node.names if a.name.startswith("alexnet_jax.")
                    }
            found[module] = names - {module, "", "alexnet_jax"}
    return found


def test_imports_point_from_the_layers_to_the_tools():
    layout = readme_layout()
    data_side, tools = layout["the data"], layout["tools"]
    assert {"datasets", "input_pipeline"} <= data_side and {"predict", "sweep"} <= tools
    graph = imports()
    assert {"networks.layers", "networks.alexnet", "train", "main", "sweep"} <= graph.keys()
    assert graph["networks.layers"] == set()  # knows nothing else
    for network in ("networks.alexnet", "networks.vgg"):
        assert graph[network] == {"networks.layers"}, network
    for module in data_side:  # the data side never imports a network
        assert not {name for name in graph[module] if name.startswith("networks")}, module
    below = {module: names & tools for module, names in graph.items() if module not in tools}
    assert {module: names for module, names in below.items() if names} == {}  # nothing below imports a tool


def test_the_networks_steps_and_optimiser_run_without_tensorflow():
    """Neither they nor any module of the package they import imports TensorFlow (or its datasets),
    at any depth of their code."""
    graph, third_party = imports(), imports(outside=True)
    needed, todo = set(), ["networks", "steps", "optim"]
    while todo:
        module = todo.pop()
        if module not in needed:
            needed.add(module)
            todo.extend(graph[module])
    assert {"networks.layers", "parallel"} <= needed
    assert {m: third_party[m] & {"tensorflow", "tensorflow_datasets"} for m in needed} == {m: set() for m in needed}
    assert "tensorflow" in third_party["input_pipeline"]  # (the check sees TensorFlow where it is imported)
