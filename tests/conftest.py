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
