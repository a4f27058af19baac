# box_panoptic: real-time panoptic segmentation from dense detections, as a detectron2 extension.
"""Scale-out on CPU (gloo): torchrun, two machines on localhost (detectron2's launcher and a
2-node torchrun rendezvous), an elastic restart after a worker is SIGKILLed, and distributed
evaluation. Every training ends with the weights of detectron2-style 2-process training with the
same seed, bit for bit."""

import json
import os
import sys

import pytest
import torch

from .helpers import ROOT, free_port, train_net_command
from .processes import run_logged

DRIVER = os.path.join(ROOT, "tests", "train_driver.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
OPTS = [
    "SOLVER.MAX_ITER",
    "6",
    "SOLVER.CHECKPOINT_PERIOD",
    "3",
    "SOLVER.WARMUP_ITERS",
    "1",
    "SOLVER.BASE_LR",
    "0.01",
]
TIMEOUT = 600


def _train_net(root, out, flags=(), opts=()):
    """(argv after the interpreter, env) of train_net.py on the tiny synthetic setting;
    ``opts`` come last (they override the tiny setting's)."""
    cmd, env = train_net_command(list(flags) + OPTS, root, out)
    # one thread in every process, whatever the layout: a convolution's rounding depends on
    # its thread count, and the runs compared here split the 2 cores differently
    return cmd[1:] + list(opts), dict(env, OMP_NUM_THREADS="1")


def _run(argvs, env, log_dir):
    """Start every argv at once (one per machine), each logging to a file in ``log_dir``; wait
    for all; each must exit 0. Returns their output."""
    os.makedirs(log_dir, exist_ok=True)
    paths = [os.path.join(log_dir, f"process{i}.log") for i in range(len(argvs))]
    done = run_logged(argvs, paths, env=env, timeout=TIMEOUT)
    for d in done:
        assert d.returncode == 0, f"{d.log_path}:\n{d.log[-4000:]}"
        assert "gloo threads outlived" not in d.log, d.log_path  # launch.release_process_groups
    return "\n".join(d.log for d in done)


def _weights(out):
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 5
    return ckpt["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory):
    """detectron2-style: one machine, 2 processes (box_panoptic's CPU launcher)."""
    out = tmp_path_factory.mktemp("launch2")
    argv, env = _train_net(synthetic_root, out, ["--num-gpus", "2"])
    _run([[sys.executable] + argv], env, out)
    return out, _weights(out)


def test_torchrun_equals_detectron2_launch(synthetic_root, tmp_path, reference):
    argv, env = _train_net(synthetic_root, tmp_path)
    port = str(free_port())
    log = _run([TORCHRUN + ["--nproc-per-node", "2", "--master-port", port] + argv], env, tmp_path)
    assert "World size: 2" in log or "world size: 2" in log.lower()
    _assert_same(_weights(tmp_path), reference[1])


def test_two_machines_on_localhost_equal_one(synthetic_root, tmp_path, reference):
    # detectron2's --num-machines / --machine-rank / --dist-url
    out = tmp_path / "d2"
    port = free_port()
    argvs = []
    for rank in (0, 1):
        flags = ["--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(rank)]
        flags += ["--dist-url", f"tcp://127.0.0.1:{port}"]
        argv, env = _train_net(synthetic_root, out, flags)
        argvs.append([sys.executable] + argv)
    _run(argvs, env, out)
    _assert_same(_weights(out), reference[1])
    # a 2-node torchrun rendezvous
    out = tmp_path / "torchrun"
    port = str(free_port())
    argv, env = _train_net(synthetic_root, out)
    node = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1"]
    _run(
        [TORCHRUN + node + ["--node-rank", r, "--master-port", port] + argv for r in ("0", "1")],
        env,
        out,
    )
    _assert_same(_weights(out), reference[1])


def test_elastic_restart_after_sigkill_resumes_exactly(synthetic_root, tmp_path, reference):
    argv, env = _train_net(synthetic_root, tmp_path)
    driver = [DRIVER, "--kill-after", "2", "--"] + argv[1:]  # argv[0] is train_net.py
    port = str(free_port())
    torchrun = TORCHRUN + ["--nproc-per-node", "2", "--max-restarts", "1", "--master-port", port]
    log = _run([torchrun + driver], env, tmp_path)
    assert "Starting training from iteration 3" in log  # the restarted group resumed
    _assert_same(_weights(tmp_path), reference[1])


def _evaluate(root, out, weights, procs):
    flags = ["--eval-only", "--num-gpus", str(procs)]
    opts = ["MODEL.WEIGHTS", str(weights), "DATASETS.TEST", "('synthetic_panoptic_val',)"]
    opts += ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160"]
    opts += ["MODEL.BOX_PANOPTIC.MASK_THRESH", "0.1"]  # a barely trained model: accept its masks
    argv, env = _train_net(root, out, flags, opts)
    log = _run([[sys.executable] + argv], env, out)
    return [line.split("copypaste: ", 1)[1] for line in log.splitlines() if "copypaste: " in line]


def test_distributed_evaluation_equals_one_process(synthetic_root, tmp_path, reference):
    # the reference weights, with detections everywhere: things in every prediction
    ckpt = torch.load(os.path.join(reference[0], "model_final.pth"), weights_only=False)
    ckpt["model"]["head.box_cls_logits.bias"].fill_(3.0)
    ckpt["model"]["sem_seg_head.cls_logits.bias"][:3] += 5.0  # thing classes 0-2 likely
    weights = tmp_path / "with_things.pth"
    torch.save({"model": ckpt["model"]}, weights)
    one = _evaluate(synthetic_root, tmp_path / "one", weights, 1)
    two = _evaluate(synthetic_root, tmp_path / "two", weights, 2)
    assert any(line.startswith("PQ,") for line in one) and one == two
    for name in ("panoptic_per_class.csv",):
        a = (tmp_path / "one" / "inference" / name).read_text()
        assert a == (tmp_path / "two" / "inference" / name).read_text()

    def predictions(folder):
        pred = folder / "inference" / "panoptic_predictions"
        with open(pred / "predictions.json") as f:
            anns = sorted(json.load(f)["annotations"], key=lambda a: a["image_id"])
        pngs = {p.name: p.read_bytes() for p in sorted(pred.glob("*.png"))}
        return anns, pngs

    anns, pngs = predictions(tmp_path / "one")
    assert len(anns) == len(pngs) > 0
    assert max(len(a["segments_info"]) for a in anns) > 2  # instances, not one stuff region
    assert (anns, pngs) == predictions(tmp_path / "two")


def test_cpu_processes_share_the_cores():
    from box_panoptic.engine.launch import _share_cpu_threads

    before = torch.get_num_threads()
    try:
        _share_cpu_threads(2)
        assert torch.get_num_threads() == min(before, max(1, (os.cpu_count() or 1) // 2))
        _share_cpu_threads(10**6)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
