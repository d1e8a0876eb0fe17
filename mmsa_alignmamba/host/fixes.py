"""Compat fixes, one per MMSA 2.2.1 bug that bites every model (README, "MMSA fixes"). Each is a
named function that patches MMSA at the narrowest point, is applied by ``install()`` and is tested
on its own (tests/test_host.py)."""
from __future__ import annotations

import builtins
import functools
import importlib
import inspect
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .. import text_padding
from ..errors import InputError
from ..safeio import safe_pickle_loads
from ..settings import checkpoint_path, resolve_output_dirs
from .configs import config_file_for
from .originals import ORIGINALS, keep
from .plugins import check_model_name

__all__ = ["COMPAT_FIXES", "build_dataloaders", "MMAP_THRESHOLD_BYTES"]


class _SafeCuda:
    """torch.cuda, except that set_device ignores non-CUDA devices."""

    def __getattr__(self, name):
        return getattr(torch.cuda, name)

    @staticmethod
    def set_device(device):
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(device)


class _MMSARunTorch:
    """Stands in for `torch` inside MMSA.run only: CPU-safe set_device, weights-only loads."""
    cuda = _SafeCuda()

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        kwargs.setdefault("map_location", "cpu")
        return torch.load(f, *args, **kwargs)


def fix_cpu_set_device() -> None:
    """MMSA_run calls torch.cuda.set_device(args['device']) even for a CPU device and crashes
    without CUDA; checkpoints are also loaded there with plain torch.load (weights_only=True here)."""
    import MMSA.run
    MMSA.run.torch = _MMSARunTorch()


def _reduce_lr_accepts_verbose() -> bool:
    return "verbose" in inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau.__init__).parameters


class ReduceLROnPlateauCompat(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau that drops the `verbose=` argument current torch no longer accepts."""

    def __init__(self, *args, verbose=None, **kwargs):
        super().__init__(*args, **kwargs)


def fix_reduce_lr_verbose() -> None:
    """MulT / MMIM / TFR_Net trainers pass verbose= to ReduceLROnPlateau: a TypeError on torch >= 2.7."""
    if _reduce_lr_accepts_verbose():
        return
    import pkgutil

    import MMSA.trains
    for info in pkgutil.walk_packages(MMSA.trains.__path__, "MMSA.trains."):
        module = importlib.import_module(info.name)
        if getattr(module, "ReduceLROnPlateau", None) is torch.optim.lr_scheduler.ReduceLROnPlateau:
            module.ReduceLROnPlateau = ReduceLROnPlateauCompat


def _plain_round(number, ndigits=None):
    """round() that returns a Python float, so CSVs show 85.2 rather than np.float64(85.2)."""
    value = builtins.round(number, ndigits)
    return float(value) if ndigits is not None else int(value)


def fix_numpy_text_in_csv() -> None:
    """Under numpy 2, MMSA_run writes cells like '(np.float64(85.2), np.float64(0.3))'."""
    import MMSA.run
    MMSA.run.round = _plain_round


def fix_duplicate_log_handlers() -> None:
    """MMSA's _set_logger adds a file and a stream handler on every call: lines repeat N times."""
    import MMSA.run
    original = keep("run._set_logger", MMSA.run._set_logger)

    def _set_logger(log_dir, model_name, dataset_name, verbose_level):
        mmsa_logger = logging.getLogger("MMSA")
        for handler in list(mmsa_logger.handlers):
            mmsa_logger.removeHandler(handler)
            handler.close()
        return original(log_dir, model_name, dataset_name, verbose_level)

    MMSA.run._set_logger = _set_logger


def fix_empty_paths() -> None:
    """`python -m MMSA` passes '' for -c and the output dirs: '' becomes Path('.'), so -c fails
    with FileNotFoundError('.') and results, models and logs land in the working directory."""
    import MMSA
    import MMSA.run
    original = keep("run.MMSA_run", MMSA.run.MMSA_run)

    signature = inspect.signature(original)

    @functools.wraps(original)
    def MMSA_run(*args, **kwargs):
        call = signature.bind(*args, **kwargs)  # positional or keyword, as MMSA allows
        call.apply_defaults()
        given = call.arguments
        given["model_name"] = check_model_name(given["model_name"])
        dirs = resolve_output_dirs(given["model_save_dir"], given["res_save_dir"], given["log_dir"])
        given.update({k: str(v) for k, v in dirs.items()})
        given["config_file"] = config_file_for(given["model_name"], given["config_file"],
                                                "tune" if given["is_tune"] else "regression")
        return original(*call.args, **call.kwargs)

    MMSA.MMSA_run = MMSA.run.MMSA_run = MMSA_run


def fix_checkpoint_per_seed() -> None:
    """MMSA_run saves every seed to the same '<model>-<dataset>.pth', so only the last survives."""
    import MMSA.run
    original_seed = keep("run.setup_seed", MMSA.run.setup_seed)
    original_run = keep("run._run", MMSA.run._run)
    current = {}

    def setup_seed(seed):
        current["seed"] = seed
        return original_seed(seed)

    def _run(args, *rest, **kwargs):
        base = Path(args.setdefault("checkpoint_base", args["model_save_path"]))
        if "seed" in current:
            args["model_save_path"] = checkpoint_path(base.parent, args["model_name"], args["dataset_name"],
                                                      current["seed"])
        return original_run(args, *rest, **kwargs)

    MMSA.run.setup_seed = setup_seed
    MMSA.run._run = _run


def build_dataloaders(args, num_workers: int = 0):
    """MMSA's MMDataLoader, except that valid and test keep their order (MMSA shuffles every split)."""
    from MMSA.data_loader import MMDataLoader
    from torch.utils.data import DataLoader
    loaders = ORIGINALS.get("MMDataLoader", MMDataLoader)(args, num_workers)
    for split in ("valid", "test"):
        loaders[split] = DataLoader(loaders[split].dataset, batch_size=args["batch_size"],
                                    num_workers=num_workers, shuffle=False)
    return loaders


def fix_eval_shuffle() -> None:
    """Every MMSA DataLoader shuffles, valid and test included; evaluation order should be fixed."""
    import MMSA.run
    keep("MMDataLoader", MMSA.run.MMDataLoader)
    MMSA.run.MMDataLoader = build_dataloaders


class _RestrictedPickleModule:
    """Stands in for `pickle` inside MMSA's data loader and MMSA_test: allow-list loading only.
    While ``recorded`` is a dict, each load is also kept there under its resolved path."""
    recorded: dict | None = None

    @classmethod
    def load(cls, f):
        name = getattr(f, "name", "<file>")
        data = safe_pickle_loads(f.read(), name)
        if cls.recorded is not None:
            cls.recorded[Path(name).resolve()] = data
        return data

    def __getattr__(self, name):
        import pickle
        return getattr(pickle, name)


def fix_unsafe_pickle_load() -> None:
    """MMSA unpickles dataset / feature files with pickle.load, which runs any code they carry."""
    import MMSA.data_loader
    import MMSA.run
    MMSA.data_loader.pickle = MMSA.run.pickle = _RestrictedPickleModule()


def _text_lengths_for(dataset, args, mode: str, loaded: dict) -> np.ndarray | None:
    """(N,) valid tokens of the split ``dataset`` holds, from the attention mask of the file its
    text came from (-Ft's file, else the dataset pickle), or None when that file has no mask."""
    if args.get("use_bert"):
        return None   # the BERT models take the mask from text_bert itself
    source = args.get("feature_T") or args.get("custom_feature") or args.get("featurePath")
    part = loaded.get(Path(source).resolve(), {}).get(mode) if source else None
    if not isinstance(part, dict) or "text" not in part:
        return None
    where = f"{source}: {mode}"
    lengths = text_padding.text_lengths(part, where)
    if lengths is None:
        if mode == "train":   # one line per run, not one per split
            text_padding.warn_if_unmarked(part, where)
        return None
    return np.minimum(lengths, dataset.text.shape[1])  # MMSA may have truncated the text


def fix_text_lengths_from_mask() -> None:
    """MMSA's MMDataset reads text_bert only for its BERT models, so for every model that takes the
    precomputed features the attention mask never reaches a batch, and BERT's non-zero [PAD] rows
    look like words. Each sample now also carries ``text_lengths``: the mask's count of valid
    tokens, from the file its text came from (checked: a mask that contradicts the text is one
    error naming the split and the first bad sample). MMSA's own models ignore the extra key."""
    from MMSA.data_loader import MMDataset
    original_init = keep("MMDataset.__init__", MMDataset.__init__)
    original_getitem = keep("MMDataset.__getitem__", MMDataset.__getitem__)

    @functools.wraps(original_init)
    def __init__(self, args, mode="train"):
        _RestrictedPickleModule.recorded = loaded = {}
        try:
            original_init(self, args, mode)
        finally:
            _RestrictedPickleModule.recorded = None
        self.text_lengths = _text_lengths_for(self, args, mode, loaded)

    @functools.wraps(original_getitem)
    def __getitem__(self, index):
        sample = original_getitem(self, index)
        if getattr(self, "text_lengths", None) is not None:
            sample["text_lengths"] = int(self.text_lengths[index])
        return sample

    MMDataset.__init__ = __init__
    MMDataset.__getitem__ = __getitem__


class _ParameterDevice:
    """MCTN's Seq2Seq.device: the device its parameters are on (the 'cuda' it is given is ignored)."""

    def __get__(self, module, owner=None):
        return self if module is None else next(module.parameters()).device

    def __set__(self, module, value) -> None:
        pass


def fix_mctn_hardcoded_cuda() -> None:
    """MCTN builds its two Seq2Seq translators with device 'cuda' and allocates their outputs there:
    AssertionError 'Torch not compiled with CUDA enabled' on CPU, and the wrong GPU on cuda:1."""
    importlib.import_module("MMSA.models.singleTask.MCTN").Seq2Seq.device = _ParameterDevice()


def fix_bert_ignores_pretrained() -> None:
    """Two of MMSA's BERT loaders ignore the config's (and --pretrained's) ``pretrained``: TFR-Net
    builds its BertTextEncoder without it, MAG-BERT loads 'bert-base-uncased' / '-chinese' by name.
    Both went to the Hugging Face hub, so a local BERT folder or an offline machine failed."""
    # (the packages' __init__ rebinds the module names to the classes: the modules by full name)
    tfr = importlib.import_module("MMSA.models.missingTask.TFR_NET.model")
    mag = importlib.import_module("MMSA.models.singleTask.BERT_MAG")
    encoder = keep("TFR_NET.BertTextEncoder", tfr.BertTextEncoder)
    tfr_init = keep("TFR_NET.__init__", tfr.TFR_NET.__init__)

    @functools.wraps(tfr_init)
    def tfr_net_init(self, args):
        tfr.BertTextEncoder = functools.partial(encoder, transformers=args.get("transformers", "bert"),
                                                pretrained=args.get("pretrained", "bert-base-uncased"))
        try:
            tfr_init(self, args)
        finally:
            tfr.BertTextEncoder = encoder

    tfr.TFR_NET.__init__ = tfr_net_init
    classifier = keep("BERT_MAG.MAG_BertForSequenceClassification", mag.MAG_BertForSequenceClassification)

    class MAGFromConfiguredBert(classifier):
        @classmethod
        def from_pretrained(cls, path, *rest, args=None, **kwargs):
            return super().from_pretrained((args or {}).get("pretrained") or path, *rest, args=args, **kwargs)

    mag.MAG_BertForSequenceClassification = MAGFromConfiguredBert


def _extended_attention_mask(self, attention_mask, input_shape=None, device=None):
    """transformers 4's ModuleUtilsMixin.get_extended_attention_mask for an encoder: the (B, T) 0/1
    mask as an additive (B, 1, 1, T) one, 0 where attended and the dtype's minimum where not."""
    mask = attention_mask[:, None, None, :].to(self.dtype)
    return (1.0 - mask) * torch.finfo(self.dtype).min


def _no_head_mask(self, head_mask, num_hidden_layers):
    """transformers 4's get_head_mask without a mask given (MMSA never gives one): None per layer."""
    if head_mask is not None:
        raise NotImplementedError("head masks are gone from transformers 5")
    return [None] * num_hidden_layers


def fix_mag_bert_transformers5() -> None:
    """MAG-BERT (BERT_MAG.py) is written against transformers 4's BertPreTrainedModel, whose helpers
    transformers 5 removed: its __init__ ends with init_weights() but only post_init() records what
    from_pretrained reads (AttributeError 'all_tied_weights_keys'), and its forward calls
    get_extended_attention_mask and get_head_mask (AttributeError). post_init (which calls
    init_weights itself) is run where MMSA's __init__ left it out, and the two helpers are given
    back with transformers 4's behaviour for an encoder."""
    mag = importlib.import_module("MMSA.models.singleTask.BERT_MAG")
    for name in ("MAG_BertModel", "MAG_BertForSequenceClassification"):
        cls = keep(f"BERT_MAG.{name}", getattr(mag, name))
        original = keep(f"BERT_MAG.{name}.__init__", cls.__init__)

        def __init__(self, config, args, _original=original):
            _original(self, config, args)
            if "all_tied_weights_keys" not in self.__dict__ and hasattr(self, "post_init"):
                self.post_init()

        cls.__init__ = functools.wraps(original)(__init__)
    for helper, compat in (("get_extended_attention_mask", _extended_attention_mask), ("get_head_mask", _no_head_mask)):
        if not hasattr(mag.MAG_BertModel, helper):
            setattr(mag.MAG_BertModel, helper, compat)


_MULTITASK_TRAIN_LOG = " {dict_to_str(train_results)}\"\n"


def fix_multitask_train_log() -> None:
    """MLF_DNN, MTFN and MLMF (SIMS's multi-task models) log ``train_results`` before the loop that
    computes them: UnboundLocalError at the end of the first epoch, so they never trained. The log
    line loses that field (the per-task lines right after it print the results); the rest of
    ``do_train`` is MMSA's own source, compiled in its module."""
    import textwrap
    for name in ("MLF_DNN", "MTFN", "MLMF"):
        module = importlib.import_module(f"MMSA.trains.multiTask.{name}")
        trainer = getattr(module, name)
        source = textwrap.dedent(inspect.getsource(keep(f"{name}.do_train", trainer.do_train)))
        if source.count(_MULTITASK_TRAIN_LOG) != 1:   # another MMSA release: leave its code alone
            continue
        namespace: dict = {}
        exec(compile(source.replace(_MULTITASK_TRAIN_LOG, '"\n', 1), inspect.getsourcefile(trainer), "exec"),
             module.__dict__, namespace)
        trainer.do_train = namespace["do_train"]


MMAP_THRESHOLD_BYTES = 128 * 1024
MMAP_THRESHOLD_ENV = "MMSA_ALIGNMAMBA_MMAP_THRESHOLD"


def _mmap_threshold() -> int:
    """MMSA_ALIGNMAMBA_MMAP_THRESHOLD (bytes; 0: off), else MMAP_THRESHOLD_BYTES; a bad value is one error."""
    text = os.environ.get(MMAP_THRESHOLD_ENV, "").strip()
    if not text:
        return MMAP_THRESHOLD_BYTES
    if not text.isdigit():
        raise InputError(f"{MMAP_THRESHOLD_ENV} must be a size in bytes (0 turns the fix off), got {text!r}")
    return int(text)


def fix_glibc_heap_growth() -> None:
    """Training MMSA's MulT at MOSI's shapes on CPU, the process's memory grew from epoch to epoch
    until the kernel killed it. Not a leak: glibc raises its mmap threshold every time a large
    block is freed (up to 32 MB), so later tensors below that size come from the heap, where a
    small block still in use pins everything freed beneath it, and freed memory stays resident.
    A fixed threshold (which also turns the raising off) puts every block over 128 KiB in its own
    mapping, handed back to the system when freed. Any model with large, changing activations
    gains; glibc only (elsewhere nothing to do).

    It acts on the whole process that imports this package: set ``MMSA_ALIGNMAMBA_MMAP_THRESHOLD``
    to another size in bytes, or to 0 to leave glibc's allocator as it is."""
    import ctypes
    import ctypes.util
    threshold = _mmap_threshold()
    if threshold == 0:
        return
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_MMAP_THRESHOLD = -3
    mallopt(M_MMAP_THRESHOLD, threshold)


COMPAT_FIXES = (
    fix_cpu_set_device,
    fix_reduce_lr_verbose,
    fix_numpy_text_in_csv,
    fix_duplicate_log_handlers,
    fix_empty_paths,
    fix_checkpoint_per_seed,
    fix_eval_shuffle,
    fix_unsafe_pickle_load,
    fix_text_lengths_from_mask,
    fix_glibc_heap_growth,
    fix_mctn_hardcoded_cuda,
    fix_bert_ignores_pretrained,
    fix_mag_bert_transformers5,
    fix_multitask_train_log,
)
