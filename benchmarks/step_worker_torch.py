"""The PyTorch reference's train step, timed on request: one of the workers of ``side_by_side.py``.

Runs under a Python that has torch and jsmin (the reference's own requirements), with the reference
repository (mahbodnr/deep_nmf) on ``PYTHONPATH``; ``side_by_side.py`` starts it so. The network is
built by the reference's own ``tools/make_network.py`` from its shipped network configs (edited only
in the neuron types, as the paper's four models need), trained by the loop body of its
``tools/run_network_train.py``: ``zero_grad`` on every optimiser, forward, the reference's loss
(``loss_mode`` 0, MSE 0.5 + KL 1.0), ``loss.item()``, ``backward``, every Adam's ``step``. Inputs
are uniform random images of the training crop (3 x 28 x 28) and random labels; augmentation is not
included (ours is: its cost is ours to carry). No state_dict is read: the weights are the
reference's initialisation after ``torch.manual_seed(21)``.

Protocol: ``step_protocol.py``; the ready record, printed after the build and ``--warmup`` steps,
is ``{"ready": ..., "parameters": ..., "compile_s": first step, "allocator": ...}``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import tempfile

import step_protocol  # beside this script
import torch
from tools.loss_function import loss_function
from tools.make_network import make_network
from tools.make_optimize import make_optimize

# model -> (shipped network config, type_of_neuron_a, type_of_neuron_b); 1 NNMF, 2 conv, 0 none
NETWORKS = {
    "cnmf_1x1": ("cnnmf_1x1cnn.json", 1, 2),
    "cnmf": ("cnnmf_1x1cnn.json", 1, 0),
    "cnn_1x1": ("cnn_1x1cnn.json", 2, 2),
    "cnn": ("cnn_1x1cnn.json", 2, 0),
}
LEARNING_RATES = [0.01, 0.001, 0.001, 0.001]  # configs/config_lr_parameter.json: a, b, norm, BN


def network_config(repo: pathlib.Path, model: str) -> dict:
    """The shipped JSON (comments removed) with the neuron types of ``model``."""
    filename, type_a, type_b = NETWORKS[model]
    text = (repo / "configs" / "networks" / filename).read_text()
    config = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))
    layers = len(config["number_of_neurons_a"])
    config["type_of_neuron_a"] = [type_a] * layers
    config["type_of_neuron_b"] = [type_b] * layers
    return config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="the reference repository's folder")
    parser.add_argument("--model", required=True, choices=sorted(NETWORKS))
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(21)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(network_config(pathlib.Path(args.repo), args.model), file)
    network, parameters, _ = make_network(28, 28, 3, torch.device("cpu"), file.name)
    pathlib.Path(file.name).unlink()
    optimizers, _ = make_optimize(parameters, LEARNING_RATES)
    network.train()
    images = torch.rand(args.batch, 3, 28, 28)
    labels = torch.randint(0, 10, (args.batch,))

    def step() -> None:
        for optimizer in optimizers:
            if optimizer is not None:
                optimizer.zero_grad()
        output = network(images)
        loss = loss_function(output, labels, 0, output.shape[1], 0.5, 1.0)
        assert loss is not None
        loss.item()
        loss.backward()
        for optimizer in optimizers:
            if optimizer is not None:
                optimizer.step()

    first = step_protocol.timed(step)
    for _ in range(args.warmup - 1):
        step()
    count = sum(p.numel() for group in parameters for p in group)
    ready = {"ready": f"torch {torch.__version__}", "parameters": count, "compile_s": first}
    ready["allocator"] = step_protocol.allocator()
    step_protocol.serve(step, ready)


if __name__ == "__main__":
    main()
