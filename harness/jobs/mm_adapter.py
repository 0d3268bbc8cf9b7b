"""Every touch of mmengine / mmseg that is private or version-sensitive, behind named functions (the
house's rule: `tests/test_architecture.py` rejects private mmengine attributes anywhere else).

- `on_device`: mmengine decides the device from a module global (`mmengine.device.utils.DEVICE`, CUDA
  wherever CUDA exists); a cell placed on the CPU must stay there.
- `runner_from_config`: mmengine's Runner, built from a config whose text form is plain Python
  literals: mmengine formats a config with yapf five times per run (logging and dumping it), about 1 s of
  a mini-world probe's 2 s; the config itself is unchanged (the record keeps it whole).
- `unwrap`: the model inside a DDP wrapper (mmengine's `is_model_wrapper`).
- `set_start_iteration`: the train loop's iteration counter, for the harness's own resume state (mmengine
  keeps it in the loop's private `_iter`; its own `resume` would reload a pickled checkpoint).
- `hook_of`: a registered hook instance by its class.
- `library_log`: the path of mmengine's own log file of a run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def on_device(accelerator: str):
    """Build and run mmengine objects on `accelerator` ("cuda" or "cpu"), restoring mmengine's choice after."""
    import mmengine.device.utils as mm_device

    saved = mm_device.DEVICE
    mm_device.DEVICE = "cuda" if accelerator == "cuda" else "cpu"
    try:
        yield
    finally:
        mm_device.DEVICE = saved


def _literal_text(cfg: dict) -> str:
    return "".join(f"{k} = {v!r}\n" for k, v in cfg.items())


def runner_from_config(cfg: dict):
    """mmengine's Runner for a config dict (as `Runner.from_cfg(Config(cfg))`), its text form plain literals."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    class LiteralConfig(Config):
        @property
        def pretty_text(self) -> str:  # mmengine's is yapf-formatted; the same values, without the cost
            return _literal_text(self.to_dict())

    return Runner.from_cfg(LiteralConfig(cfg))


def unwrap(model):
    """The model a DDP (or other mmengine) wrapper holds; the model itself when it is not wrapped."""
    from mmengine.model import is_model_wrapper

    return model.module if is_model_wrapper(model) else model


def set_start_iteration(runner, iteration: int) -> None:
    """Make the train loop continue from `iteration` (the harness restored the state of that step)."""
    runner.train_loop._iter = int(iteration)


def hook_of(runner, cls):
    """The runner's registered hook of class `cls`."""
    found = [h for h in runner.hooks if isinstance(h, cls)]
    if len(found) != 1:
        raise RuntimeError(f"the runner has {len(found)} hooks of type {cls.__name__}, expected one")
    return found[0]


def library_log(runner) -> Path:
    """mmengine's own log file of this run (beside its scalars under the work folder)."""
    return Path(runner.log_dir) / f"{runner.timestamp}.log"
