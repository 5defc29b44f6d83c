"""Parsed arguments into the library's options: model options, the scoring
mode, stopping rules, token positions."""
from __future__ import annotations


def model_options(args):
    from ..runner import ModelOptions
    return ModelOptions(gpu_layers=args.gpu_layers, batch=args.batch, ubatch=args.ubatch,
                        threads=args.threads, threads_batch=args.threads_batch,
                        parallel=args.parallel, cache_type_k=args.cache_type_k,
                        cache_type_v=args.cache_type_v, flash_attn=args.flash_attn).check()


def mode_of(args) -> str:
    return "exact" if args.exact else "llama"


def stop_rule(args):
    from ..evaluation import StopRule
    if args.target_unc is None and args.target_unc_rel is None:
        return None
    return StopRule(args.target_unc, args.target_unc_rel)


def positions_of(args):
    from ..reports import read_positions
    return read_positions(args.positions) if args.positions else None
