import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU (run on the GPU image)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensor ops: with 2 threads on a busy 2-core machine OpenMP spin-waits dominate.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def e2e_workdir(tmp_path_factory):
    """Tiny prepared dataset shared by the end-to-end and fault-injection modules (test_trainer_e2e.py)."""
    from test_trainer_e2e import prepare_workdir

    return prepare_workdir(tmp_path_factory.mktemp("e2e"))


@pytest.fixture(scope="session")
def e2e_recast_run(e2e_workdir):
    """One uninterrupted tiny ReCast run (torch engine), trained once per session; copy it before changing it."""
    from test_trainer_e2e import train_reference_run

    return train_reference_run(e2e_workdir)


@pytest.fixture(scope="session")
def sglang_setup(tmp_path_factory):
    """ONE launched SGLang server for the whole session (tests marked ``sglang``), serving a tiny random Llama
    exported by the project's own ``export_hf_dir``, with the engine around it. Tests may change its weights:
    ``model`` always holds the weights the server serves (the reference for log-probs)."""
    from recast_mcore.config.rollout import SGLangServerConfig, WeightSyncConfig
    from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine
    from recast_mcore.rollout.testing import exported_tiny_llama

    root = tmp_path_factory.mktemp("sglang")
    vocab, catalog, model = exported_tiny_llama(root)
    cfg = SGLangServerConfig(max_total_tokens=4096, omp_threads=1, log_dir=str(root / "logs"), request_timeout_s=60,
                             startup_timeout_s=900)  # imports alone take minutes on this shared 2-core machine
    engine = SGLangRolloutEngine(cfg, WeightSyncConfig(method="disk"), catalog, str(root / "hf"),
                                 work_dir=str(root / "work"))
    prompts = [vocab.encode_prompt([i, (3 * i) % 40, (5 * i + 1) % 40][: 1 + i % 3]) for i in range(8)]
    state = {"vocab": vocab, "catalog": catalog, "model": model, "engine": engine, "prompts": prompts, "root": root}
    yield state
    engine.close()
